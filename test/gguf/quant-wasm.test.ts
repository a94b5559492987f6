/**
 * The WebAssembly kernels (libs/gguf/quant-wasm.ts) against the scalar JavaScript kernels of quant.ts (which
 * kernels.test.ts holds to gguf-py's bytes): every source dtype into Q8_0, F16, BF16 and F32, byte for byte, on
 * random blocks and on the edge cases (zero blocks, ±0, float32 and float16 subnormals, scales that underflow
 * or whose inverse overflows, ties at .5 after scaling, negative maxima, NaN and infinite values, NaN payloads);
 * and encodeTensor with the kernels against encodeTensor without them (chunk cuts, the q/k permutation, a
 * change of dtype mid-tensor, F64 sources).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeInto, elementBytes, encode } from '../../libs/gguf/quant';
import { QuantKernels, useQuantWasm, type DstType, type SrcDtype } from '../../libs/gguf/quant-wasm';
import { encodeTensor, type EncodeOptions, type SourceChunk } from '../../libs/gguf/stream';
import { f32BitsToBf16Ggml } from '../../libs/gguf/quant';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { xorshift32 } from '../../tools/testing/tiny-models';

const f32 = (bits: number) => new Float32Array(new Uint32Array([bits >>> 0]).buffer)[0]!;

/** A seeded generator (xorshift32), so a failure reproduces. */
const rng = (seed: number) => xorshift32(seed, 1);

/** Blocks of 32 float32 values: random ones at several scales, and each edge case in a block of its own. */
function float32Blocks(): Float32Array {
  const r = rng(24);
  const blocks: number[][] = [];
  const u = () => r() / 2 ** 32;
  for (const scale of [1, 1e-3, 1e3, 2 ** -120, 2 ** -130, 2 ** -140, 60000, 1e30]) {
    for (let b = 0; b < 24; b++) blocks.push(Array.from({ length: 32 }, () => (u() - 0.5) * 2 * scale));
  }
  // Random bit patterns: every exponent, NaNs and infinities among them.
  for (let b = 0; b < 64; b++) blocks.push(Array.from({ length: 32 }, () => f32(r())));
  const zero = new Array(32).fill(0);
  blocks.push(zero, zero.map(() => -0), zero.map((_, i) => (i % 2 ? -0 : 0)));
  // Scale 1 (max 127): every .5 tie, both signs, and 127 at either sign as the maximum.
  blocks.push(Array.from({ length: 32 }, (_, i) => (i === 0 ? 127 : (i - 16) + 0.5)));
  blocks.push(Array.from({ length: 32 }, (_, i) => (i === 0 ? -127 : -(i % 16) - 0.5)));
  blocks.push(Array.from({ length: 32 }, (_, i) => (i === 5 ? -127 : i * 0.25 - 4)));
  // Ties and neighbours at other scales: max 254 (d = 2), values at odd integers (x · id = k + .5).
  blocks.push(Array.from({ length: 32 }, (_, i) => (i === 0 ? 254 : 2 * i + 1)));
  blocks.push(Array.from({ length: 32 }, (_, i) => (i === 0 ? 254 : f32(((2 * i + 1) * 2 ** 20 + 1) >>> 0))));
  // float32 subnormals: in a block of subnormals (d underflows to 0 or 1 / d overflows), and beside normals.
  blocks.push(Array.from({ length: 32 }, (_, i) => f32(i + 1)));
  blocks.push(Array.from({ length: 32 }, (_, i) => f32(0x007fffff - i * 977) * (i % 2 ? -1 : 1)));
  blocks.push(Array.from({ length: 32 }, (_, i) => (i === 3 ? 1 : f32(i * 12345))));
  // max |x| where d = max / 127 lands around float32's and float16's subnormal range.
  for (const m of [127 * 2 ** -126, 127 * 2 ** -127, 127 * 2 ** -128, 127 * 2 ** -129, 2 ** -100, 127 * 2 ** -24, 127 * 2 ** -25, 127 * 2 ** -14, 127 * 65504, 127 * 65520, 3e38]) {
    blocks.push(Array.from({ length: 32 }, (_, i) => (i === 7 ? -m : (m * (i - 16)) / 17)));
  }
  // NaN and infinities.
  for (const special of [NaN, Infinity, -Infinity, f32(0x7f800001), f32(0xffc12345), f32(0x7fa00000)]) {
    blocks.push(Array.from({ length: 32 }, (_, i) => (i === 9 ? special : i - 3)));
  }
  blocks.push(Array.from({ length: 32 }, (_, i) => (i % 3 ? Infinity : -Infinity)));
  return new Float32Array(blocks.flat());
}

/** The same values as source bytes of `dt` (BF16/F16 values: the float32 bits' truncations plus random 16-bit patterns). */
function sourceBytes(dt: SrcDtype): Buffer {
  const x = float32Blocks();
  if (dt === 'F32') return Buffer.from(x.buffer);
  const bits = new Uint32Array(x.buffer);
  const r = rng(7);
  const out = new Uint16Array(x.length + 32 * 64);
  for (let i = 0; i < x.length; i++) out[i] = dt === 'BF16' ? bits[i]! >>> 16 : bits[i]! >>> 19 | ((bits[i]! >>> 16) & 0x8000);
  for (let i = x.length; i < out.length; i++) out[i] = r() & 0xffff;
  // Every 16-bit pattern once, in blocks of 32 (NaN payloads, subnormals, infinities).
  const all = new Uint16Array(65536);
  for (let h = 0; h < 65536; h++) all[h] = h;
  return Buffer.concat([Buffer.from(out.buffer), Buffer.from(all.buffer)]);
}

/** quant.ts's path: decode to float32, encode. */
function reference(src: Buffer, dt: SrcDtype, to: DstType): Buffer {
  const n = src.length / (dt === 'F32' ? 4 : 2);
  const vals = new Float32Array(n);
  decodeInto(src, dt, vals, 0);
  const out = Buffer.alloc(elementBytes(to, n));
  encode(vals, to, out);
  return out;
}

function kernel(src: Buffer, dt: SrcDtype, to: DstType): Buffer {
  const size = dt === 'F32' ? 4 : 2;
  const n = src.length / size;
  const k = QuantKernels.create(4096)!;
  assert.ok(k, 'WebAssembly SIMD kernels compile here');
  const parts: Buffer[] = [];
  for (let at = 0; at < n; at += 4096) {
    const m = Math.min(4096, n - at);
    k.mem.set(src.subarray(at * size, (at + m) * size), k.A);
    k.run(dt, to, m, k.A, k.OUT);
    parts.push(Buffer.from(k.mem.subarray(k.OUT, k.OUT + elementBytes(to, m))));
  }
  return Buffer.concat(parts);
}

function firstDiff(a: Buffer, b: Buffer, unit: number): string {
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return i === a.length && a.length === b.length ? 'none' : `byte ${i} (unit ${Math.floor(i / unit)}): kernel ${a.subarray(i - (i % unit), i - (i % unit) + unit).toString('hex')}, reference ${b.subarray(i - (i % unit), i - (i % unit) + unit).toString('hex')}`;
}

for (const dt of ['F32', 'BF16', 'F16'] as const) {
  for (const to of ['Q8_0', 'F16', 'BF16', 'F32'] as const) {
    test(`kernel ${dt} -> ${to} equals quant.ts byte for byte (random and edge-case blocks)`, () => {
      const src = sourceBytes(dt);
      const got = kernel(src, dt, to);
      const want = reference(src, dt, to);
      assert.equal(got.length, want.length);
      assert.equal(firstDiff(got, want, to === 'Q8_0' ? 34 : to === 'F32' ? 4 : 2), 'none');
    });
  }
}

test('the kernels equal gguf-py\'s recorded bytes (test/fixtures/gguf/kernels.json) directly', () => {
  const fx = JSON.parse(readFileSync(join(FIXTURES, 'gguf', 'kernels.json'), 'utf8')) as Record<string, string>;
  const x = Buffer.from(fx.x!, 'base64');
  assert.ok(kernel(x, 'F32', 'Q8_0').equals(Buffer.from(fx.q8_0!, 'base64')), 'Q8_0');
  const y = Buffer.from(fx.y!, 'base64');
  assert.ok(kernel(y, 'F32', 'F16').equals(Buffer.from(fx.f16!, 'base64')), 'F16');
  assert.ok(kernel(y, 'F32', 'BF16').equals(Buffer.from(fx.bf16!, 'base64')), 'BF16');
});

test('the edge cases are what they claim: NaN, infinite, zero and overflowing-inverse blocks quantise to zeros', () => {
  const one = (vals: number[]) => kernel(Buffer.from(new Float32Array(vals).buffer), 'F32', 'Q8_0');
  const block = (v: number, at = 4) => Array.from({ length: 32 }, (_, i) => (i === at ? v : i === 0 ? 0 : 1e-3 * i));
  const nan = one(block(NaN));
  assert.equal(nan.readUInt16LE(0), 0x7e00, 'a NaN block\'s scale is numpy\'s quiet NaN');
  assert.ok(nan.subarray(2).every((b) => b === 0));
  const inf = one(block(-Infinity));
  assert.equal(inf.readUInt16LE(0), 0x7c00);
  assert.ok(inf.subarray(2).every((b) => b === 0));
  // 1 / d overflows: every product infinite, numpy's int8 cast gives 0.
  const tiny = one(Array.from({ length: 32 }, (_, i) => (i + 1) * 2 ** -140));
  assert.equal(tiny.readUInt16LE(0), 0);
  assert.ok(tiny.subarray(2).every((b) => b === 0));
  // Ties round away from zero: scale 1, x = 2.5 -> 3, -2.5 -> -3, 0.5 -> 1.
  const ties = one(Array.from({ length: 32 }, (_, i) => (i === 0 ? 127 : i === 1 ? 2.5 : i === 2 ? -2.5 : i === 3 ? 0.5 : 0)));
  assert.equal(ties.readUInt16LE(0), 0x3c00);
  assert.deepEqual([...new Int8Array(ties.buffer, ties.byteOffset + 2, 4)], [127, 3, -3, 1]);
  // float16 of a signalling NaN keeps its payload (numpy's cast), BF16 makes it quiet (ggml's).
  const snan = Buffer.from(new Uint32Array([0x7f802000, 0x7f810000, 0xff800001, 0, 0, 0, 0, 0]).buffer);
  const u16 = (b: Buffer) => [0, 1, 2].map((i) => b.readUInt16LE(2 * i));
  assert.deepEqual(u16(kernel(snan, 'F32', 'F16')), [0x7c01, 0x7c08, 0xfc01]);
  assert.deepEqual(u16(kernel(snan, 'F32', 'BF16')), [f32BitsToBf16Ggml(0x7f802000), 0x7fc1, 0xffc0]);
});

async function collect(chunks: SourceChunk[], opts: EncodeOptions, wasm: boolean): Promise<Buffer> {
  useQuantWasm(wasm);
  try {
    async function* gen() {
      for (const c of chunks) yield { data: Buffer.from(c.data), dtype: c.dtype };
    }
    const out: Buffer[] = [];
    for await (const b of encodeTensor(gen(), opts)) out.push(Buffer.from(b));
    return Buffer.concat(out);
  } finally {
    useQuantWasm(true);
  }
}

/** A tensor's bytes cut at odd places (whole values). */
function cut(src: Buffer, dtype: string, sizes: number[]): SourceChunk[] {
  const es = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
  const out: SourceChunk[] = [];
  let at = 0;
  for (let i = 0; at < src.length; i++) {
    const n = Math.min(sizes[i % sizes.length]! * es, src.length - at);
    out.push({ data: src.subarray(at, at + n), dtype });
    at += n;
  }
  return out;
}

test('encodeTensor with the kernels equals encodeTensor without them: chunk cuts, q/k permutation, every type', async () => {
  const rows = 16, rowLength = 64;
  const r = rng(99);
  for (const dt of ['F32', 'BF16', 'F16'] as const) {
    const vals = new Float32Array(rows * rowLength * 33).map(() => (r() / 2 ** 32 - 0.5) * 3);
    const src = reference(Buffer.from(vals.buffer), 'F32', dt);
    for (const type of ['Q8_0', 'F16', 'BF16', 'F32'] as const) {
      for (const permuteGroupRows of [undefined, 8]) {
        const opts: EncodeOptions = { type, rowLength, permuteGroupRows };
        const chunks = cut(src, dt, [7, 1000, 33, 4096, 5]);
        const got = await collect(chunks, opts, true);
        const want = await collect(chunks, opts, false);
        assert.equal(got.length, elementBytes(type, vals.length));
        assert.ok(got.equals(want), `${dt} -> ${type}${permuteGroupRows ? ' permuted' : ''}: ${firstDiff(got, want, 34)}`);
      }
    }
  }
});

test('encodeTensor with the kernels: a change of source dtype mid-block, and F64 sources, as without them', async () => {
  const r = rng(5);
  const vals = new Float32Array(32 * 40).map(() => (r() / 2 ** 32 - 0.5) * 7);
  const bf = reference(Buffer.from(vals.buffer), 'F32', 'BF16');
  const f16 = reference(Buffer.from(vals.buffer), 'F32', 'F16');
  const f64 = Buffer.from(new Float64Array(vals).map((v, i) => v + i * 1e-9).buffer);
  // 100 BF16 values (3 blocks and 4 values), then F16, F32, F64 and BF16 again (2048 in all): the held values change dtype mid-block.
  const chunks: SourceChunk[] = [
    { data: bf.subarray(0, 200), dtype: 'BF16' },
    { data: f16.subarray(200, 600), dtype: 'F16' },
    { data: Buffer.from(vals.buffer).subarray(1200, 2000), dtype: 'F32' },
    { data: f64.subarray(4000, 8000), dtype: 'F64' },
    { data: bf.subarray(464), dtype: 'BF16' },
  ];
  for (const type of ['Q8_0', 'F16'] as const) {
    const got = await collect(chunks, { type, rowLength: 32 * 8, permuteGroupRows: type === 'F16' ? 2 : undefined }, true);
    const want = await collect(chunks, { type, rowLength: 32 * 8, permuteGroupRows: type === 'F16' ? 2 : undefined }, false);
    assert.ok(got.equals(want), `${type}: ${firstDiff(got, want, 34)}`);
  }
  // Unpermuted F16/BF16/F32 output: chunks of another dtype through the kernels, F64 through JavaScript.
  for (const type of ['F16', 'BF16', 'F32'] as const) {
    const got = await collect(chunks, { type, rowLength: 32 }, true);
    const want = await collect(chunks, { type, rowLength: 32 }, false);
    assert.ok(got.equals(want), `${type} unpermuted: ${firstDiff(got, want, 2)}`);
  }
});
