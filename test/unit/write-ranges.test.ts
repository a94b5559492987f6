/**
 * Bytes that go out unchanged are copied by the writer straight from the source file (FileRange chunks), a small
 * slice at a time, instead of through a 16 MiB chunk: the write stage's producer hands them over as ranges, the
 * shard holds the same bytes as through the Buffer path, and a source that ends early is named in the error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkPool, FileRange, readSafetensorsHeader, writeShard } from '../../libs/safetensors';
import { tensorProducer } from '../../libs/stages/write';
import type { PlanTensor, SourcePart } from '../../libs/plan/types';
import { tempDir } from '../helpers/tmp';

const d = tempDir('moe-forge-ranges-');

/** A source file of n bytes, each byte its position's pattern; as bfloat16, finite values in ±[0.007, 4). */
function source(name: string, n: number): { file: string; bytes: Buffer } {
  const bytes = Buffer.alloc(n);
  for (let i = 0; i < n; i++) bytes[i] = i % 2 ? 0x3c + ((i >> 1) % 5) + (i & 2 ? 0x80 : 0) : (i * 31 + (i >> 9)) & 0xff;
  const file = join(d, name);
  writeFileSync(file, bytes);
  return { file, bytes };
}

test('writeShard copies FileRange chunks from their files between Buffer chunks, across the copy slice size', async () => {
  const a = source('a.bin', (300 << 10) + 6); // more than two 128 KiB slices, not a multiple of one
  const b = source('b.bin', 4096);
  const specs = [
    { name: 'x', dtype: 'U8', shape: [(300 << 10) + 6 - 10 + 100] },
    { name: 'y', dtype: 'U8', shape: [1000] },
  ];
  const made = Buffer.alloc(100, 7);
  const f = join(d, 'mixed.safetensors');
  await writeShard(f, specs, (t) => t.name === 'x'
    ? [new FileRange(a.file, 10, 200 << 10, 'x'), made, new FileRange(a.file, 10 + (200 << 10), a.bytes.length - 10 - (200 << 10), 'x')]
    : [new FileRange(b.file, 3000, 1000, 'y')]);
  const h = await readSafetensorsHeader(f);
  const data = readFileSync(f).subarray(h.dataStart);
  const want = Buffer.concat([a.bytes.subarray(10, 10 + (200 << 10)), made, a.bytes.subarray(10 + (200 << 10)), b.bytes.subarray(3000, 4000)]);
  assert.equal(data.length, want.length);
  assert.ok(data.equals(want), 'the shard holds the ranges\' bytes and the made chunk in order');
});

test('a FileRange past the end of its file stops the write with the file and tensor named', async () => {
  const s = source('short.bin', 1000);
  await assert.rejects(
    writeShard(join(d, 'short.safetensors'), [{ name: 'w', dtype: 'U8', shape: [600] }], () => [new FileRange(s.file, 500, 600, 'w')]),
    (e: Error) => e.message.includes('short.bin') && /tensor w/.test(e.message) && /file ended while copying 600 bytes/.test(e.message),
  );
});

test('the write stage\'s producer hands unchanged parts over as ranges of at most a chunk, casts and transforms as bytes, the same bytes either way', async () => {
  const n = 20 << 20; // bf16 values: more than one 16 MiB chunk
  const s = source('bf16.bin', n * 2);
  const part = (extra: Partial<SourcePart> = {}): SourcePart => ({ kind: 'source', model: 'm', tensor: 'w', file: s.file, offset: 0, byteLength: n * 2, dtype: 'BF16', shape: [n], ...extra });
  const plain: PlanTensor = { name: 'plain', dtype: 'BF16', shape: [n], parts: [part()], group: 'base' };
  // Scaled: bytes the writer computes. Cast: bfloat16 -> float32 widens (never a range).
  const scaled: PlanTensor = { name: 'scaled', dtype: 'BF16', shape: [n], parts: [part({ scale: 0.5 })], group: 'base' };
  const cast: PlanTensor = { name: 'cast', dtype: 'F32', shape: [n], parts: [part()], group: 'base' };
  const pool = new ChunkPool(16 << 20);
  const ranged = tensorProducer(null, pool, { ranges: true });
  const plainChunks = [];
  for await (const c of ranged(plain)) plainChunks.push(c);
  assert.ok(plainChunks.length === 3 && plainChunks.every((c) => c instanceof FileRange), 'three ranges for 40 MiB');
  assert.ok(plainChunks.every((c) => c.length <= 16 << 20));
  for (const t of [scaled, cast]) for await (const c of ranged(t)) assert.ok(Buffer.isBuffer(c), `${t.name}: made bytes`);
  // Written through ranges and through Buffers: the same shard.
  const shard = async (file: string, produce: (t: PlanTensor) => AsyncIterable<Buffer | FileRange>) => {
    const tensors = [plain, scaled];
    await writeShard(join(d, file), tensors, (t) => produce(tensors.find((x) => x.name === t.name)!), { pool });
    return readFileSync(join(d, file));
  };
  const viaRanges = await shard('ranges.safetensors', ranged);
  const viaBuffers = await shard('buffers.safetensors', tensorProducer(null, pool));
  assert.ok(viaRanges.equals(viaBuffers), 'byte for byte the same');
  const h = await readSafetensorsHeader(join(d, 'ranges.safetensors'));
  assert.ok(viaRanges.subarray(h.dataStart, h.dataStart + n * 2).equals(s.bytes), 'the plain tensor is its source');
});
