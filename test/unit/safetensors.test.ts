import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  SafetensorsWeights, readSafetensorsHeader, readTensorBytes, writeShard, planShards, indexJson,
  f32ToBf16Bits, bf16BitsToF32, f32ToF16Bits, f16BitsToF32, convertBytes, encodeFloats, decodeFloats, MAX_HEADER_BYTES,
} from '../../libs/safetensors';
import { tempDir, TINY } from '../helpers/tmp';

function rawFile(header: object, dataBytes: number, headerLenOverride?: number): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(headerLenOverride ?? json.length));
  return Buffer.concat([prefix, json, Buffer.alloc(dataBytes)]);
}

test('reads the fixture header and a tensor lazily by name', async () => {
  const w = await SafetensorsWeights.openFolder(TINY('a'));
  const loc = w.get('model.embed_tokens.weight');
  assert.deepEqual(loc.shape, [512, 64]);
  assert.equal(loc.dtype, 'F32');
  const bytes = await readTensorBytes(loc);
  assert.equal(bytes.length, 512 * 64 * 4);
  assert.throws(() => w.get('model.nope.weight'), /tensor model\.nope\.weight: tensor is missing from .*model\.safetensors/);
});

test('header validation errors name the file, the tensor and the expectation', async () => {
  const d = tempDir();
  const cases: [string, Buffer, RegExp][] = [
    ['truncated.safetensors', Buffer.from([1, 2, 3]), /truncated safetensors file: 3 bytes/],
    ['past-end.safetensors', rawFile({}, 0, 5000), /header length 5000 runs past the end of the file/],
    ['huge.safetensors', rawFile({}, 0, MAX_HEADER_BYTES + 1), /exceeds the limit/],
    ['not-json.safetensors', Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{{{{')]), /not valid JSON/],
    ['array.safetensors', rawFile([] as unknown as object, 0), /must be a JSON object/],
    ['dtype.safetensors', rawFile({ t: { dtype: 'F17', shape: [2], data_offsets: [0, 8] } }, 8), /tensor t: unknown dtype "F17"/],
    ['size.safetensors', rawFile({ t: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8), /tensor t: shape \[3\] × F32 needs 12 bytes but data_offsets span 8/],
    ['overlap.safetensors', rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12), /tensor b: data_offsets \[4, 12\] overlap tensor a/],
    // A zero-size tensor between them must not hide that b starts inside a.
    ['hidden-overlap.safetensors', rawFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, z: { dtype: 'F32', shape: [0], data_offsets: [8, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [12, 20] } }, 20), /tensor b: data_offsets \[12, 20\] overlap tensor a/],
    ['nested-overlap.safetensors', rawFile({ a: { dtype: 'F32', shape: [8], data_offsets: [0, 32] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] }, c: { dtype: 'F32', shape: [2], data_offsets: [16, 24] } }, 32), /tensor b: data_offsets \[4, 8\] overlap tensor a/],
    ['outside.safetensors', rawFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 8), /tensor a: data_offsets \[0, 16\] run past the end of the data \(8 bytes/],
  ];
  for (const [name, bytes, re] of cases) {
    const f = join(d, name);
    writeFileSync(f, bytes);
    await assert.rejects(readSafetensorsHeader(f), (e: Error) => {
      assert.match(e.message, re, name);
      assert.ok(e.message.startsWith(f), `message names the file: ${e.message}`);
      return true;
    });
  }
});

test('a shard written tensor by tensor reads back equal, header padded to 8 bytes', async () => {
  const d = tempDir();
  const a = new Float32Array([1, -2, 3.5, 4]);
  const b = new Float32Array([0.1, 0.2, 0.3]);
  const specs = [{ name: 'a', dtype: 'F32', shape: [2, 2] }, { name: 'b', dtype: 'BF16', shape: [3] }];
  const f = join(d, 'model.safetensors');
  await writeShard(f, specs, (t) => [t.name === 'a' ? encodeFloats(a, 'F32') : encodeFloats(b, 'BF16')]);
  const h = await readSafetensorsHeader(f);
  assert.equal(h.dataStart % 8, 0);
  assert.deepEqual(h.metadata, { format: 'pt' });
  const w = await SafetensorsWeights.openFolder(d);
  assert.deepEqual(decodeFloats(await readTensorBytes(w.get('a')), 'F32'), a);
  assert.deepEqual([...decodeFloats(await readTensorBytes(w.get('b')), 'BF16')], [...b].map((x) => bf16BitsToF32(f32ToBf16Bits(x))));
  await assert.rejects(writeShard(join(d, 'bad.safetensors'), specs, () => [Buffer.alloc(4)]), /tensor a: produced 4 bytes, expected 16/);
});

test("the reference's shard rule: flush before a tensor that would overflow; an oversized tensor gets its own shard", () => {
  const t = (name: string, n: number) => ({ name, dtype: 'F32', shape: [n] });
  const shards = planShards([t('a', 10), t('b', 10), t('c', 100), t('d', 5)], 80);
  assert.deepEqual(shards.map((s) => s.tensors.map((x) => x.name)), [['a', 'b'], ['c'], ['d']]);
  assert.deepEqual(shards.map((s) => s.file), ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
  assert.deepEqual(planShards([t('a', 10)], 80).map((s) => s.file), ['model.safetensors']);
  const idx = JSON.parse(indexJson(shards));
  assert.equal(idx.metadata.total_size, 125 * 4);
  assert.deepEqual(Object.keys(idx.weight_map), ['a', 'b', 'c', 'd']);
});

test('bf16 and f16 conversion round to nearest even', () => {
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
  assert.equal(bf16BitsToF32(f32ToBf16Bits(1 + 2 ** -8)), 1);
  assert.equal(bf16BitsToF32(f32ToBf16Bits(1 + 3 * 2 ** -8)), 1 + 2 ** -6);
  assert.equal(bf16BitsToF32(f32ToBf16Bits(1 + 2 ** -8 + 2 ** -20)), 1 + 2 ** -7);
  assert.equal(f32ToBf16Bits(NaN) & 0x7fc0, 0x7fc0);
  assert.equal(f16BitsToF32(f32ToF16Bits(1 + 2 ** -11)), 1);
  assert.equal(f16BitsToF32(f32ToF16Bits(1 + 3 * 2 ** -11)), 1 + 2 ** -9);
  assert.equal(f16BitsToF32(f32ToF16Bits(70000)), Infinity);
  assert.equal(f16BitsToF32(f32ToF16Bits(2 ** -24)), 2 ** -24);
  assert.equal(f16BitsToF32(f32ToF16Bits(-0.333251953125)), -0.333251953125);
  const src = encodeFloats([1.5, -2.25, 3.0078125], 'F32');
  assert.deepEqual([...decodeFloats(convertBytes(src, 'F32', 'BF16'), 'BF16')], [1.5, -2.25, 3]);
  assert.deepEqual([...decodeFloats(convertBytes(convertBytes(src, 'F32', 'BF16'), 'BF16', 'F32'), 'F32')], [1.5, -2.25, 3]);
  // 65504 rounds to 65536 in bf16, which overflows f16.
  assert.deepEqual([...decodeFloats(convertBytes(encodeFloats([0.5, 65504], 'BF16'), 'BF16', 'F16'), 'F16')], [0.5, Infinity]);
});

test('the bulk casts (tables, loops) agree with the scalar conversions on every 16-bit value and on special floats', () => {
  const all = Buffer.alloc(65536 * 2);
  for (let h = 0; h < 65536; h++) all.writeUInt16LE(h, h * 2);
  const cases: [string, 'F32' | 'F16' | 'BF16', (h: number) => number][] = [
    ['BF16', 'F16', (h) => f32ToF16Bits(bf16BitsToF32(h))],
    ['F16', 'BF16', (h) => f32ToBf16Bits(f16BitsToF32(h))],
  ];
  for (const [from, to, scalar] of cases) {
    const out = convertBytes(all, from, to);
    for (let h = 0; h < 65536; h++) {
      const want = scalar(h);
      const got = out.readUInt16LE(h * 2);
      // NaN payloads may differ; NaN must stay NaN.
      if (got !== want && !(Number.isNaN(decodeFloats(Buffer.from([want & 0xff, want >> 8]), to)[0]) && Number.isNaN(decodeFloats(out.subarray(h * 2, h * 2 + 2), to)[0]))) {
        assert.fail(`${from}->${to} of 0x${h.toString(16)}: 0x${got.toString(16)}, expected 0x${want.toString(16)}`);
      }
    }
    const wide = decodeFloats(convertBytes(all, from, 'F32'), 'F32');
    for (let h = 0; h < 65536; h++) {
      const want = from === 'BF16' ? bf16BitsToF32(h) : f16BitsToF32(h);
      if (!Object.is(wide[h], want) && !(Number.isNaN(wide[h]) && Number.isNaN(want))) assert.fail(`${from}->F32 of 0x${h.toString(16)}: ${wide[h]} vs ${want}`);
    }
  }
  const specials = [0, -0, 1, -1, 1 + 2 ** -8, 1 + 3 * 2 ** -9, 3.4e38, -3.4e38, Infinity, -Infinity, NaN, 1e-40, 65504, 65520, 2 ** -24, 2 ** -25];
  const src = encodeFloats(specials, 'F32');
  const bf = convertBytes(src, 'F32', 'BF16');
  const hf = convertBytes(src, 'F32', 'F16');
  specials.forEach((x, i) => {
    assert.equal(bf.readUInt16LE(i * 2), f32ToBf16Bits(x), `bf16 of ${x}`);
    assert.equal(hf.readUInt16LE(i * 2), f32ToF16Bits(x), `f16 of ${x}`);
  });
});

test('sharded folders are read through model.safetensors.index.json', async () => {
  const d = tempDir();
  const specs = [{ name: 'x', dtype: 'F32', shape: [2] }, { name: 'y', dtype: 'F32', shape: [2] }];
  const shards = planShards(specs, 8);
  for (const s of shards) await writeShard(join(d, s.file), s.tensors, () => [encodeFloats([1, 2], 'F32')]);
  writeFileSync(join(d, 'model.safetensors.index.json'), indexJson(shards));
  const w = await SafetensorsWeights.openFolder(d);
  assert.deepEqual(w.names().sort(), ['x', 'y']);
  assert.match(w.get('y').file, /model-00002-of-00002/);
  const idx = JSON.parse(readFileSync(join(d, 'model.safetensors.index.json'), 'utf8'));
  idx.weight_map.y = 'model-00001-of-00002.safetensors';
  writeFileSync(join(d, 'model.safetensors.index.json'), JSON.stringify(idx));
  await assert.rejects(SafetensorsWeights.openFolder(d), /tensor y: index maps this tensor to model-00001-of-00002.safetensors but that shard does not hold it/);
});

test('decodeFloats of F32 bytes gives each stored value bit for bit, from any byte offset (NaN payloads, -0 and infinities kept)', () => {
  const bits = new Uint32Array([0x3f800000, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00001, 0x00000001, 0xc0490fdb]);
  const backing = Buffer.alloc(bits.byteLength + 3);
  Buffer.from(bits.buffer).copy(backing, 3); // an unaligned view, as a tensor inside a file read whole can be
  const got = decodeFloats(backing.subarray(3), 'F32');
  assert.deepEqual([...new Uint32Array(got.buffer)], [...bits]);
});
