import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { bf16BitsToF32, convertBytes, decodeFloats, encodeFloats, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type FloatDtype } from '../../libs/safetensors/dtype';
import { floatKernels, FLOAT_CAP, useFloatWasm, WasmFloatBuffer } from '../../libs/safetensors/float-wasm';
import { useWasmNormals, wasmNormals } from '../../libs/gates/torch-normal-wasm';
import { normalsNative, setNoiseKernel } from '../../libs/gates/normals-native';
import { noiseApplier, scaleBytes, streamNormals, TorchDrawSeeker } from '../../libs/noise/noise';
import type { SourcePart } from '../../libs/plan/types';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Runs fn with both WebAssembly paths off (the JavaScript fallbacks), then turns them back on. */
function withoutWasm<T>(fn: () => T): T {
  useFloatWasm(false);
  useWasmNormals(false);
  setNoiseKernel('wasm');
  try {
    assert.equal(floatKernels(), null);
    assert.equal(wasmNormals(), null);
    return fn();
  } finally {
    useFloatWasm(true);
    useWasmNormals(true);
    setNoiseKernel(undefined);
  }
}

/** Runs fn with the noise kernels given (native: the default where the CPU has AVX-512), then back to the default. */
function withNoiseKernel<T>(mode: 'native' | 'avx2' | 'portable' | 'wasm', fn: () => T): T {
  setNoiseKernel(mode === 'native' ? undefined : mode);
  try {
    return fn();
  } finally {
    setNoiseKernel(undefined);
  }
}

/** float32 bit patterns that reach every rounding case: ties both ways, subnormal and overflow edges, specials. */
function edgeFloats(): Uint32Array {
  const bits: number[] = [];
  for (const sign of [0, 0x80000000]) {
    for (let e = 0; e < 256; e++) {
      for (const m of [0, 1, 0x7fff, 0x8000, 0x8001, 0x18000, 0xfff, 0x1000, 0x1001, 0x3000, 0x7fe000, 0x7ff000, 0x7fffff, 0x400000, 0x200000]) {
        bits.push((sign | (e << 23) | m) >>> 0);
      }
    }
  }
  // and random patterns
  let x = 12345;
  for (let i = 0; i < 200_000; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    bits.push((x ^ (x << 13)) >>> 0);
  }
  return Uint32Array.from(bits);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
const fromBits = (b: number) => {
  u32[0] = b;
  return f32[0]!;
};
const isNaN16 = (h: number, dt: 'BF16' | 'F16') => (dt === 'BF16' ? Number.isNaN(bf16BitsToF32(h)) : Number.isNaN(f16BitsToF32(h)));

test('the WebAssembly casts give the scalar conversions\' bits: float32 edge cases and random patterns to bfloat16 / float16', () => {
  assert.ok(floatKernels(), 'WebAssembly SIMD kernels available');
  const bits = edgeFloats();
  const src = Buffer.from(bits.buffer);
  for (const to of ['BF16', 'F16'] as const) {
    const fast = convertBytes(src, 'F32', to);
    const slow = withoutWasm(() => convertBytes(src, 'F32', to));
    for (let i = 0; i < bits.length; i++) {
      const x = fromBits(bits[i]!);
      const got = fast.readUInt16LE(i * 2);
      if (Number.isNaN(x)) {
        assert.ok(isNaN16(got, to), `NaN 0x${bits[i]!.toString(16)} stays NaN in ${to}`);
        assert.equal(got >> 15, bits[i]! >>> 31, 'NaN keeps its sign');
        continue;
      }
      const want = to === 'BF16' ? f32ToBf16Bits(x) : f32ToF16Bits(x);
      if (got !== want) assert.fail(`F32 0x${bits[i]!.toString(16)} -> ${to}: 0x${got.toString(16)}, expected 0x${want.toString(16)}`);
      if (slow.readUInt16LE(i * 2) !== want) assert.fail(`JavaScript path: F32 0x${bits[i]!.toString(16)} -> ${to}`);
    }
  }
});

test('the WebAssembly casts between 16-bit types and to float32 match the JavaScript path on every value, at any length', () => {
  const all = Buffer.alloc(65536 * 2);
  for (let h = 0; h < 65536; h++) all.writeUInt16LE(h, h * 2);
  for (const from of ['BF16', 'F16'] as const) {
    for (const to of ['BF16', 'F16', 'F32'] as const) {
      if (from === to) continue;
      // Odd lengths and a length past one kernel call (FLOAT_CAP values).
      for (const n of [1, 3, 7, 65536]) {
        const src = all.subarray(0, n * 2);
        const fast = convertBytes(src, from, to);
        const slow = withoutWasm(() => convertBytes(src, from, to));
        assert.equal(fast.length, slow.length);
        const a = decodeFloats(fast, to), b = decodeFloats(slow, to);
        for (let i = 0; i < n; i++) {
          if (Number.isNaN(a[i]) && Number.isNaN(b[i])) continue;
          if (!Object.is(a[i], b[i])) assert.fail(`${from}->${to} of 0x${i.toString(16)}: ${a[i]} vs ${b[i]}`);
        }
      }
    }
  }
  assert.ok(FLOAT_CAP < 3 * 65536 / 2, 'the float32 case spans several kernel calls');
  const wide = Buffer.from(edgeFloats().buffer).subarray(0, 3 * 65536 * 2);
  assert.ok(convertBytes(wide, 'F32', 'BF16').equals(withoutWasm(() => convertBytes(wide, 'F32', 'BF16'))));
});

/** n 16-bit patterns covering every value (all 65536 when n allows), then a pseudo-random rest. */
function patterns16(n: number, salt: number): Buffer {
  const b = Buffer.alloc(2 * n);
  for (let i = 0; i < n; i++) b.writeUInt16LE(i < 65536 ? (i * 40503 + salt) & 0xffff : Math.imul(i, 2654435761) >>> 16, 2 * i);
  return b;
}

test('a WebAssembly float buffer widens 16-bit values in place to convertBytes\'s float32 bits, at any length (kernel rounds and tails)', () => {
  const buf = WasmFloatBuffer.create();
  assert.ok(buf, 'WebAssembly SIMD is available on Node 20');
  // Lengths around the kernels' 16- and 4-value rounds, and every 16-bit value (NaNs, infinities, subnormals, -0).
  const lengths = [...Array.from({ length: 40 }, (_, i) => i + 1), 255, 256, 257, 65536, 65536 + 13];
  for (const dtype of ['BF16', 'F16'] as const) {
    for (const n of lengths) {
      const src = patterns16(n, n);
      // convertBytes's kernels (checked against the JavaScript path above; they also keep NaN payloads)
      const want = convertBytes(src, dtype, 'F32');
      const view = buf.floats(n);
      assert.equal(view.length, n);
      Buffer.from(view.buffer, view.byteOffset + 2 * n, 2 * n).set(src); // where the weight reader puts them
      const after = new Uint8Array(view.buffer, 4 * n, Math.min(256, 4 * buf.capacity - 4 * n)).fill(0xa5);
      buf.widen(n, dtype);
      assert.ok(after.every((b) => b === 0xa5), `${dtype} n=${n}: bytes past the n values untouched`);
      const got = Buffer.from(view.buffer, view.byteOffset, 4 * n);
      if (!got.equals(want)) {
        const i = new Uint32Array(got.buffer, got.byteOffset, n).findIndex((v, j) => v !== want.readUInt32LE(4 * j));
        assert.fail(`${dtype} n=${n}: value ${i} (0x${src.readUInt16LE(2 * i).toString(16)}) widened to 0x${got.readUInt32LE(4 * i).toString(16)}, want 0x${want.readUInt32LE(4 * i).toString(16)}`);
      }
    }
  }
});

test('a WebAssembly float buffer widens in ranges, in order (as a layer\'s chunks arrive), to what one widening gives', () => {
  const buf = WasmFloatBuffer.create()!;
  for (const dtype of ['BF16', 'F16'] as const) {
    for (const [n, cuts] of [[1000, [0, 16, 17, 500, 999, 1000]], [65536 + 13, [0, 32768, 65536 + 13]], [37, [0, 37]]] as const) {
      const src = patterns16(n, 3 * n);
      const view = buf.floats(n);
      Buffer.from(view.buffer, view.byteOffset + 2 * n, 2 * n).set(src);
      for (let i = 0; i + 1 < cuts.length; i++) buf.widenRange(n, cuts[i]!, cuts[i + 1]!, dtype);
      assert.ok(Buffer.from(view.buffer, view.byteOffset, 4 * n).equals(convertBytes(src, dtype, 'F32')), `${dtype} n=${n} cut at ${cuts.join(',')}`);
    }
  }
  assert.throws(() => buf.widenRange(10, 5, 11, 'BF16'), /widen of values 5\.\.11 outside 0\.\.10/);
  assert.throws(() => buf.widenRange(10, 6, 5, 'BF16'), /widen of values 6\.\.5 outside 0\.\.10/);
});

test('a reused WebAssembly float buffer: smaller and larger tensors after one another get only their own values', () => {
  const buf = WasmFloatBuffer.create()!;
  let cap = 0;
  for (const [n, dtype] of [[100_000, 'BF16'], [37, 'BF16'], [20_000, 'F16'], [300_000, 'BF16'], [5, 'F16'], [300_000, 'F16']] as const) {
    const src = patterns16(n, 7 * n);
    const view = buf.floats(n);
    assert.ok(buf.capacity >= n && buf.capacity >= cap, 'grows, never shrinks');
    cap = buf.capacity;
    Buffer.from(view.buffer, view.byteOffset + 2 * n, 2 * n).set(src);
    buf.widen(n, dtype);
    assert.ok(Buffer.from(view.buffer, view.byteOffset, 4 * n).equals(convertBytes(src, dtype, 'F32')), `${dtype} n=${n}`);
  }
  assert.throws(() => buf.widen(cap + 1, 'BF16'), /past the buffer/);
  assert.throws(() => buf.floats(2 ** 30 + 1), /exceed a WebAssembly memory/);
});

function part(dtype: FloatDtype, n: number, torch: boolean, stream = 'noise/expert/1/0/w1', seed = 42, scale = 0.02): SourcePart {
  return {
    kind: 'source', model: 'm', tensor: 't', file: 'f', offset: 0, byteLength: n * (dtype === 'F32' ? 4 : 2), dtype, shape: [n],
    noise: { scale, seed, stream, ...(torch ? { torch: { offset: 640, cachedNormal: null } } : {}) },
  };
}

/** Weights of every dtype with a few infinities among them. */
function weights(dtype: FloatDtype, n: number): Buffer {
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = Math.sin(i * 0.37) * (1 + (i % 7)) * (i % 5 === 0 ? 1e-3 : 1);
  v[n >> 1] = Infinity;
  v[n - 1] = -Infinity;
  return encodeFloats(v, dtype);
}

/** The noised bytes of a tensor read in chunks of the given sizes (values, cycled). */
function noised(p: SourcePart, src: Buffer, chunks: number[]): Buffer {
  const a = noiseApplier(p, () => new TorchDrawSeeker(p.noise!.seed))!;
  const size = p.dtype === 'F32' ? 4 : 2;
  const out: Buffer[] = [];
  for (let at = 0, k = 0; at < src.length; k++) {
    const len = Math.min(chunks[k % chunks.length]! * size, src.length - at);
    out.push(a.applyBytes(src.subarray(at, at + len)));
    at += len;
  }
  return Buffer.concat(out);
}

test('noise: the default kernels (native or WebAssembly) and the JavaScript path give the same bytes, for both generators and every dtype, in any chunking', () => {
  // Odd length, past one generator call (WASM_BLOCKS·16 values) and past one kernel call (FLOAT_CAP values).
  const n = 100_003;
  for (const dtype of ['BF16', 'F16', 'F32'] as const) {
    for (const torch of [false, true]) {
      const src = weights(dtype, n);
      const whole = noised(part(dtype, n, torch), src, [n]);
      assert.equal(whole.length, src.length);
      assert.ok(!whole.equals(src), 'noise changed the values');
      assert.ok(noised(part(dtype, n, torch), src, [1, 4099, 17, 65536, 33333]).equals(whole), `${dtype} torch=${torch}: chunking changes nothing`);
      const js = withoutWasm(() => noised(part(dtype, n, torch), src, [12345, 7]));
      assert.ok(js.equals(whole), `${dtype} torch=${torch}: JavaScript path gives the kernel's bytes`);
      // Huge and tiny scales: products past half's range (infinity) and in its subnormals.
      for (const scale of [30000, 1e-6]) {
        const p = part(dtype, 5000, torch, 'noise/expert/1/0/w1', 42, scale);
        const w = src.subarray(0, 5000 * (dtype === 'F32' ? 4 : 2));
        assert.ok(noised(p, w, [5000]).equals(withoutWasm(() => noised(p, w, [5000]))), `${dtype} torch=${torch} scale ${scale}`);
      }
      // The infinities stay infinities.
      const back = decodeFloats(whole, dtype);
      assert.equal(back[n >> 1], Infinity);
      assert.equal(back[n - 1], -Infinity);
    }
  }
});

test('noise: the native kernels (AVX-512 and AVX2 where the CPU has them, and their portable C path) give the WebAssembly kernels\' bytes, both generators, NaNs, infinities and subnormals among the weights', { skip: (() => { setNoiseKernel('portable'); try { return normalsNative() === null && 'build/normals.node not built'; } finally { setNoiseKernel(undefined); } })() }, () => {
  const avx2 = (() => { setNoiseKernel('avx2'); try { return normalsNative() !== null; } finally { setNoiseKernel(undefined); } })();
  const native = [...(normalsNative() ? ['native' as const] : []), ...(avx2 ? ['avx2' as const] : []), 'portable' as const];
  const n = 100_003;
  for (const dtype of ['BF16', 'F16', 'F32'] as const) {
    const src = weights(dtype, n);
    // Quiet and signalling NaNs of both signs, subnormals, both zeros.
    const size = dtype === 'F32' ? 4 : 2;
    const specials = dtype === 'F32' ? [0x7fc00001, 0xff800123, 0x7f800001, 0x00000005, 0x80000000, 0x807fffff] : dtype === 'BF16' ? [0x7fc1, 0xff81, 0x7f81, 0x0005, 0x8000, 0x807f] : [0x7e01, 0xfc01, 0x7c01, 0x0005, 0x8000, 0x83ff];
    specials.forEach((b, i) => (size === 4 ? src.writeUInt32LE(b >>> 0, (1000 + i) * 4) : src.writeUInt16LE(b, (1000 + i) * 2)));
    for (const torch of [false, true]) {
      const wasm = withNoiseKernel('wasm', () => noised(part(dtype, n, torch), src, [n]));
      for (const mode of native) {
        assert.ok(withNoiseKernel(mode, () => noised(part(dtype, n, torch), src, [n])).equals(wasm), `${dtype} torch=${torch} ${mode}`);
        assert.ok(withNoiseKernel(mode, () => noised(part(dtype, n, torch), src, [1, 4099, 17, 65536, 33333])).equals(wasm), `${dtype} torch=${torch} ${mode}, in chunks`);
        for (const scale of [30000, 1e-6, 1e-30]) {
          const p = part(dtype, 5000, torch, 'noise/expert/1/0/w1', 42, scale);
          const w = src.subarray(0, 5000 * size);
          assert.ok(withNoiseKernel(mode, () => noised(p, w, [5000])).equals(withNoiseKernel('wasm', () => noised(p, w, [5000]))), `${dtype} torch=${torch} ${mode} scale ${scale}`);
        }
      }
    }
  }
});

test('noise of two tensors drawn alternately equals each drawn alone (the generator\'s buffers are not shared)', () => {
  const n = 70_001;
  const src = weights('BF16', n);
  for (const torch of [false, true]) {
    const alone = [noised(part('BF16', n, torch, 'noise/expert/1/0/w1'), src, [n]), noised(part('BF16', n, torch, 'noise/expert/2/0/w1'), src, [n])];
    const a = noiseApplier(part('BF16', n, torch, 'noise/expert/1/0/w1'), () => new TorchDrawSeeker(42))!;
    const b = noiseApplier(part('BF16', n, torch, 'noise/expert/2/0/w1'), () => new TorchDrawSeeker(42))!;
    const outA: Buffer[] = [], outB: Buffer[] = [];
    for (let at = 0; at < src.length; at += 5000 * 2) {
      outA.push(a.applyBytes(src.subarray(at, at + 5000 * 2)));
      outB.push(b.applyBytes(src.subarray(at, at + 5000 * 2)));
    }
    assert.ok(Buffer.concat(outA).equals(alone[0]!), `torch=${torch}: first tensor`);
    assert.ok(Buffer.concat(outB).equals(alone[1]!), `torch=${torch}: second tensor`);
  }
});

test('default noise: one stream per tensor label and seed, standard normal, pinned bits (the same on every machine)', () => {
  const draw = (seed: number, stream: string, n: number) => {
    const out = new Float32Array(n);
    streamNormals(seed, stream, n).read(out);
    return out;
  };
  const a = draw(42, 'noise/expert/0/3/w2', 50_000);
  assert.notDeepEqual(Array.from(a.subarray(0, 16)), Array.from(draw(42, 'noise/expert/1/3/w2', 16)));
  assert.notDeepEqual(Array.from(a.subarray(0, 16)), Array.from(draw(43, 'noise/expert/0/3/w2', 16)));
  // A shorter tensor reads the start of the same stream.
  assert.deepEqual(Array.from(draw(42, 'noise/expert/0/3/w2', 21)), Array.from(a.subarray(0, 21)));
  let mean = 0, sq = 0;
  for (const x of a) {
    mean += x;
    sq += x * x;
  }
  mean /= a.length;
  const sd = Math.sqrt(sq / a.length - mean * mean);
  assert.ok(Math.abs(mean) < 0.02 && Math.abs(sd - 1) < 0.02, `mean ${mean}, sd ${sd}`);
  // Pinned: a change of the algorithm (or a machine that computes differently) shows up here.
  const pinned = sha(new Uint8Array(a.buffer));
  assert.equal(withoutWasm(() => sha(new Uint8Array(draw(42, 'noise/expert/0/3/w2', 50_000).buffer))), pinned);
  assert.equal(pinned, PINNED_STREAM_SHA);
});

const PINNED_STREAM_SHA = 'a0d60e4ef5f07e1abac2c8311c1bb59d08e24ea580ce1bcda7840eb9f3ab768d';

test('residual_scale on raw bytes: the kernel gives the scalar float32 product rounded to the dtype, edge cases included', () => {
  const bits = edgeFloats();
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    const src = convertBytes(Buffer.from(bits.buffer), 'F32', dtype);
    for (const s of [0.5, Math.fround(0.7071), 3, Math.fround(1e-3)]) {
      const fast = scaleBytes(src, dtype, s);
      const slow = withoutWasm(() => scaleBytes(src, dtype, s));
      const a = decodeFloats(fast, dtype), b = decodeFloats(slow, dtype), w = decodeFloats(src, dtype);
      for (let i = 0; i < a.length; i++) {
        if (Number.isNaN(a[i]) && Number.isNaN(b[i])) continue;
        if (!Object.is(a[i], b[i])) assert.fail(`${dtype} ${w[i]} * ${s}: ${a[i]} vs ${b[i]}`);
      }
      assert.ok(!fast.equals(src) || s === 1, 'the values changed');
    }
  }
});

test('every 16-bit value widens to convertBytes\'s float32 bits in the kernels\' tails and in the JavaScript fallback', () => {
  // 15 values a call: all of them lie in the tail the kernels leave to JavaScript; the fallback does all.
  for (const simd of [true, false]) {
    const buf = WasmFloatBuffer.create(simd)!;
    for (const dtype of ['BF16', 'F16'] as const) {
      for (const n of simd ? [15] : [15, 65536]) {
        for (let first = 0; first < 65536; first += n) {
          const m = Math.min(n, 65536 - first);
          const src = Buffer.alloc(2 * m);
          for (let i = 0; i < m; i++) src.writeUInt16LE(first + i, 2 * i);
          const view = buf.floats(m);
          Buffer.from(view.buffer, 2 * m, 2 * m).set(src);
          buf.widen(m, dtype);
          const got = Buffer.from(view.buffer, 0, 4 * m), want = convertBytes(src, dtype, 'F32');
          if (!got.equals(want)) {
            const i = new Uint32Array(got.buffer, got.byteOffset, m).findIndex((v, j) => v !== want.readUInt32LE(4 * j));
            assert.fail(`${dtype} simd=${simd}: 0x${(first + i).toString(16)} widened to 0x${got.readUInt32LE(4 * i).toString(16)}, want 0x${want.readUInt32LE(4 * i).toString(16)}`);
          }
        }
      }
    }
  }
});

test('the widening kernels compiled ahead by prepare() are the ones the first widen uses (nothing compiled on the calling thread)', () => {
  // A fresh process: this file's other tests have compiled the kernels already.
  const code = `
    const { WasmFloatBuffer } = require(${JSON.stringify(join(__dirname, '../../libs/safetensors/float-wasm.ts'))});
    WasmFloatBuffer.prepare().then(() => {
      WebAssembly.Module = function () { throw new Error('compiled on the calling thread'); };
      const b = WasmFloatBuffer.create();
      const v = b.floats(40);
      new Uint16Array(v.buffer, 80, 40).fill(0xbfc0); // bfloat16 -1.5
      b.widen(40, 'BF16');
      console.log(JSON.stringify({ kernels: WasmFloatBuffer.create() !== null, values: v.every((x) => x === -1.5) }));
    });`;
  const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', code], { encoding: 'utf8' });
  assert.deepEqual(JSON.parse(out.trim()), { kernels: true, values: true });
});
