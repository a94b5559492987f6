/** The GGUF writer and reader: every value type round-trips; damaged files are refused in one line naming them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readGguf, readTensorData, writeGguf, type GgufKv } from '../../libs/gguf';
import { tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-gguf-reader-');

const META: GgufKv[] = [
  { key: 'general.architecture', value: { type: 'string', value: 'llama' } },
  { key: 'a.u8', value: { type: 'u8', value: 255 } },
  { key: 'a.i8', value: { type: 'i8', value: -128 } },
  { key: 'a.u16', value: { type: 'u16', value: 65535 } },
  { key: 'a.i16', value: { type: 'i16', value: -32768 } },
  { key: 'a.u32', value: { type: 'u32', value: 4294967295 } },
  { key: 'a.i32', value: { type: 'i32', value: -2147483648 } },
  { key: 'a.f32', value: { type: 'f32', value: 1e-5 } },
  { key: 'a.f64', value: { type: 'f64', value: Math.PI } },
  { key: 'a.u64', value: { type: 'u64', value: 2n ** 64n - 1n } },
  { key: 'a.i64', value: { type: 'i64', value: -(2n ** 63n) } },
  { key: 'a.bool', value: { type: 'bool', value: true } },
  { key: 'a.strings', value: { type: 'array', itemType: 'string', value: ['', 'héllo', '<s>'] } },
  { key: 'a.ints', value: { type: 'array', itemType: 'i32', value: [1, -2, 3] } },
];

async function sample(name: string): Promise<string> {
  const file = join(dir, name);
  const t1 = Buffer.from(new Float32Array([1, 2, 3, 4, 5, 6]).buffer);
  const t2 = Buffer.alloc(34 * 2, 7);
  await writeGguf(file, META, [
    { name: 'a.weight', shape: [3, 2], type: 'F32', bytes: async function* () { yield t1.subarray(0, 8); yield t1.subarray(8); } },
    { name: 'b.weight', shape: [32, 2], type: 'Q8_0', bytes: async function* () { yield t2; } },
  ]);
  return file;
}

test('every value type and tensors round-trip, at aligned offsets', async () => {
  const file = await sample('ok.gguf');
  const g = await readGguf(file);
  assert.equal(g.version, 3);
  const want = META.map(({ key, value }) => [key, key === 'a.f32' ? { ...value, value: Math.fround(1e-5) } : value]);
  assert.deepEqual([...g.metadata], want);
  assert.deepEqual(g.tensors.map((t) => [t.name, t.shape, t.type, t.bytes, t.offset % 32]), [['a.weight', [3, 2], 'F32', 24, 0], ['b.weight', [32, 2], 'Q8_0', 68, 0]]);
  assert.deepEqual([...new Float32Array((await readTensorData(file, g.tensors[0]!)).buffer.slice(0))], [1, 2, 3, 4, 5, 6]);
  assert.ok((await readTensorData(file, g.tensors[1]!)).every((b) => b === 7));
});

test('a tensor that yields the wrong number of bytes stops the write', async () => {
  await assert.rejects(
    writeGguf(join(dir, 'short.gguf'), META, [{ name: 'a.weight', shape: [4], type: 'F32', bytes: async function* () { yield Buffer.alloc(12); } }]),
    /GGUF tensor a\.weight: 12 bytes produced for 16 expected/,
  );
});

test('damaged files are refused in one line naming the file and what is wrong', async () => {
  const good = readFileSync(await sample('src.gguf'));
  const g = await readGguf(join(dir, 'src.gguf'));
  const cases: [string, Buffer, RegExp][] = [
    ['magic', Buffer.concat([Buffer.from('GGUX'), good.subarray(4)]), /it does not start with the GGUF magic/],
    ['version', (() => { const b = Buffer.from(good); b.writeUInt32LE(9, 4); return b; })(), /version 9 \(2 or 3 expected\)/],
    ['cut header', good.subarray(0, 200), /ends inside its header/],
    ['cut data', good.subarray(0, g.dataOffset + 40), /tensor b\.weight \(68 bytes at \d+\) runs past the end of the file/],
    ['huge count', (() => { const b = Buffer.from(good); b.writeBigUInt64LE(1n << 40n, 16); return b; })(), /do not fit in \d+ bytes/],
  ];
  for (const [name, bytes, why] of cases) {
    const f = join(dir, `${name.replace(' ', '-')}.gguf`);
    writeFileSync(f, bytes);
    await assert.rejects(readGguf(f), (e: Error) => {
      assert.match(e.message, new RegExp(`^${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: not a valid GGUF file: `));
      assert.match(e.message, why);
      assert.ok(!e.message.includes('\n'), e.message);
      return true;
    }, name);
  }
});
