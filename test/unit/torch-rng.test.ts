import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TorchGenerator, fmaf, wordsOf, Mt19937, LargeNormalStream, drawBlocks } from '../../libs/gates/torch-rng';
import { advanceTorchState, noiseApplier, TorchDrawSeeker } from '../../libs/noise/noise';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type FloatDtype } from '../../libs/safetensors/dtype';
import type { SourcePart } from '../../libs/plan/types';
import { FIXTURES } from '../helpers/tmp';
import { createHash } from 'node:crypto';
import { fusedMaddWorks, useFusedNormals, useWasmNormals, wasmNormals, wasmStats } from '../../libs/gates/torch-normal-wasm';
import { normalsNative, setNoiseKernel } from '../../libs/gates/normals-native';

/**
 * The kernels a generator can run on this machine: the native ones (their best code where the CPU has AVX2 or
 * AVX-512, their AVX2 code, their portable C, where built), WebAssembly, JavaScript.
 */
type Kernel = 'native' | 'avx2' | 'portable' | 'wasm' | 'js';
const nativeKernel = (mode: 'avx2' | 'portable' | undefined) => {
  setNoiseKernel(mode);
  try {
    return normalsNative()?.kernel ?? null;
  } finally {
    setNoiseKernel(undefined);
  }
};
const nativeBuilt = nativeKernel('portable') !== null;
const hasAvx2 = nativeKernel('avx2') !== null;
const NATIVE: Kernel[] = [...(normalsNative() ? ['native' as const] : []), ...(hasAvx2 ? ['avx2' as const] : []), ...(nativeBuilt ? ['portable' as const] : [])];
const KERNELS: Kernel[] = [...NATIVE, 'wasm', 'js'];
function withKernel<T>(k: Kernel, fn: () => T): T {
  setNoiseKernel(k === 'native' ? undefined : k === 'js' ? 'wasm' : k);
  useWasmNormals(k !== 'js');
  try {
    const want = { native: normalsNative()?.kernel ?? null, avx2: 2, portable: 1, wasm: null, js: null }[k];
    assert.equal(normalsNative()?.kernel ?? null, want, `kernel ${k}`);
    return fn();
  } finally {
    setNoiseKernel(undefined);
    useWasmNormals(true);
  }
}

interface Draw {
  fn: 'randn' | 'rand';
  shape: number[];
  dtype: 'float32' | 'bfloat16' | 'float16';
  bits: number[];
}
const streams = JSON.parse(readFileSync(join(FIXTURES, 'torch-rng', 'streams.json'), 'utf8')) as { cases: { seed: number; name: string; draws: Draw[] }[] };
const DT: Record<string, FloatDtype> = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' };
const numel = (s: number[]) => s.reduce((a, b) => a * b, 1);

const f32 = new Float32Array(1);
const i32 = new Int32Array(f32.buffer);
function bitsOf(v: Float32Array, dtype: FloatDtype): number[] {
  return Array.from(v, (x) => {
    if (dtype === 'BF16') return f32ToBf16Bits(x);
    if (dtype === 'F16') return f32ToF16Bits(x);
    f32[0] = x;
    return i32[0]!;
  });
}

for (const c of streams.cases) {
  test(`torch generator, seed ${c.seed}: ${c.name}: every draw bit for bit, in sequence`, () => {
    const g = new TorchGenerator(c.seed);
    for (const [k, d] of c.draws.entries()) {
      const dtype = DT[d.dtype]!;
      const v = d.fn === 'randn' ? g.randn(numel(d.shape), dtype) : g.rand(numel(d.shape), dtype);
      const got = bitsOf(v, dtype);
      const bad = got.findIndex((b, i) => b !== d.bits[i]);
      assert.equal(bad, -1, `draw ${k} (${d.fn} ${d.shape.join('x')} ${d.dtype}): value ${bad} has bits ${got[bad]}, torch ${d.bits[bad]}`);
    }
  });
}

test('a large randn read in uneven chunks equals the one-shot draw, and takes the words wordsOf says', () => {
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    for (const n of [16, 17, 31, 48, 1000, 4099]) {
      const whole = new TorchGenerator(5).randn(n, dtype);
      const g = new TorchGenerator(5);
      const s = g.randnStream(n, dtype);
      const parts: number[] = [];
      for (let at = 0, k = 1; at < n; k = (k * 7) % 23 + 1) {
        const out = new Float32Array(Math.min(k, n - at));
        s.read(out);
        parts.push(...out);
        at += out.length;
      }
      assert.deepEqual(parts, Array.from(whole), `${dtype} n=${n}`);
      assert.equal(g.mt.offset, wordsOf('randn', n, dtype, false).words, `${dtype} n=${n} words`);
      assert.throws(() => s.read(new Float32Array(1)), /read past the end/);
    }
  }
});

test('small randn keeps the second normal of each pair for the next small draw; the state planner follows it', () => {
  const g = new TorchGenerator(9);
  g.randn(3);
  const cached = g.cachedNormal;
  assert.notEqual(cached, null);
  const b = g.randn(2);
  assert.equal(b[0], Math.fround(cached!));
  let st = advanceTorchState(9, { offset: 0, cachedNormal: null }, 'randn', 3, 'F32');
  assert.deepEqual(st, { offset: 8, cachedNormal: cached });
  st = advanceTorchState(9, st, 'randn', 2, 'F32');
  assert.deepEqual(st, g.state());
  // A large draw in between leaves the cached value alone.
  st = advanceTorchState(9, st, 'randn', 40, 'F32');
  assert.equal(st.offset, g.state().offset + 56);
});

test('mt19937 skip and clone agree with drawing', () => {
  const a = new Mt19937(3);
  for (let i = 0; i < 2000; i++) a.next();
  const b = new Mt19937(3);
  b.skip(1500);
  const c = b.clone();
  b.skip(500);
  const x = a.next();
  assert.equal(b.next(), x);
  c.skip(500);
  assert.equal(c.next(), x);
  assert.equal(c.offset, 2001);
  // 5489 is std::mt19937's default seed; its 10000th output is the value the C++ standard fixes.
  const d = new Mt19937(5489);
  d.skip(9999);
  assert.equal(d.next(), 4123659995);
});

test('fmaf rounds once: a double sum that lands halfway between two floats is resolved by its lost bits', () => {
  // (1 + 2^-12) * (1 - 2^-12 + 2^-24) * 2^-24 = 2^-24 + 2^-60: plus 1, the double sum is the halfway point
  // 1 + 2^-24 (ties to 1), but the exact sum lies above it.
  const a = 1 + 2 ** -12;
  const b = (1 - 2 ** -12 + 2 ** -24) * 2 ** -24;
  assert.equal(Math.fround(a), a);
  assert.equal(Math.fround(b), b);
  assert.equal(Math.fround(a * b + 1), 1, 'the naive double route rounds the wrong way');
  assert.equal(fmaf(a, b, 1), 1 + 2 ** -23);
  assert.equal(fmaf(a, -b, -1), -1 - 2 ** -23);
  assert.equal(fmaf(2 ** -12, 2 ** -12, 1), 1, 'a true tie still rounds to even');
  assert.equal(fmaf(3, 0.5, 0.25), 1.75);
});

test('noise on bfloat16 / float16 weights is the reference\'s w + randn_like(w) * noise_scale in that dtype', () => {
  const fx = JSON.parse(readFileSync(join(FIXTURES, 'torch-rng', 'noise-16bit.json'), 'utf8')) as {
    cases: { dtype: string; shape: number[]; seed: number; noise_scale: number; residual_scale: number | null; w_bits: number[]; out_bits: number[] }[];
  };
  for (const c of fx.cases) {
    const dtype = DT[c.dtype]!;
    const dec = dtype === 'BF16' ? bf16BitsToF32 : f16BitsToF32;
    const enc = dtype === 'BF16' ? f32ToBf16Bits : f32ToF16Bits;
    const round = (x: number) => dec(enc(x));
    const part: SourcePart = {
      kind: 'source', model: 'm', tensor: 't', file: 'f', offset: 0, byteLength: 0, dtype, shape: c.shape,
      noise: { scale: c.noise_scale, seed: c.seed, stream: 'noise/expert/0/0/gate_proj', torch: { offset: 0, cachedNormal: null } },
    };
    const applier = noiseApplier(part, () => new TorchDrawSeeker(c.seed))!;
    const v = Float32Array.from(c.w_bits, (b) => dec(b & 0xffff));
    // In two chunks, as the writer streams them.
    const cut = Math.floor(v.length / 3);
    applier.apply(v.subarray(0, cut));
    applier.apply(v.subarray(cut));
    // residual_scale as the writer applies it after the noise: float32 product, rounded to the dtype.
    if (c.residual_scale !== null) for (let i = 0; i < v.length; i++) v[i] = round(v[i]! * Math.fround(c.residual_scale));
    const got = Array.from(v, (x) => enc(x));
    const want = c.out_bits.map((b) => b & 0xffff);
    const bad = got.findIndex((b, i) => b !== want[i]);
    assert.equal(bad, -1, `${c.dtype} ${c.shape.join('x')}: value ${bad} is ${got[bad]}, torch ${want[bad]}`);
  }
});

test('the seeker gives the same draws in any order of requests', () => {
  const states = [0, 640, 5000, 1300].map((offset) => ({ offset, cachedNormal: null }));
  const fresh = states.map((s) => {
    const g = new TorchGenerator(11);
    g.mt.skip(s.offset);
    return Array.from(g.randn(64));
  });
  const seeker = new TorchDrawSeeker(11);
  for (const i of [0, 2, 1, 3, 0, 2]) assert.deepEqual(Array.from(seeker.at(states[i]!).randn(64)), fresh[i]);
});

const cpuInfo = () => {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
};

const large = JSON.parse(readFileSync(join(FIXTURES, 'torch-rng', 'large.json'), 'utf8')) as {
  cases: { seed: number; fn: 'randn' | 'rand'; n: number; dtype: string; sha256: string; after_bits: number[] }[];
};

function largeCasesMatch(label: string): void {
  for (const c of large.cases) {
    const dtype = DT[c.dtype]!;
    const g = new TorchGenerator(c.seed);
    g.randn(5);
    const v = c.fn === 'randn' ? g.randn(c.n, dtype) : g.rand(c.n, dtype);
    const bits = dtype === 'F32' ? new Int32Array(v.buffer) : Int16Array.from(bitsOf(v, dtype));
    assert.equal(createHash('sha256').update(new Uint8Array(bits.buffer)).digest('hex'), c.sha256, `${c.fn} ${c.n} ${c.dtype} seed ${c.seed} (${label})`);
    assert.deepEqual(bitsOf(g.randn(3), 'F32'), c.after_bits);
  }
}

test('large draws match PyTorch in every value (sha256) with the native kernels: AVX-512 and AVX2 where the CPU has them, and their portable C path', { skip: !nativeBuilt && 'build/normals.node not built' }, () => {
  for (const k of NATIVE) withKernel(k, () => largeCasesMatch(k));
});

test('large draws match PyTorch in every value (sha256), halfway cases and the cached small normal included: the fused kernel and the emulating one', () => {
  setNoiseKernel('wasm');
  after(() => setNoiseKernel(undefined));
  for (const fused of [true, false]) {
    useFusedNormals(fused);
    try {
      assert.ok(wasmNormals(), 'WebAssembly SIMD kernel available');
      assert.equal(wasmNormals()!.fused, fused && fusedMaddWorks());
      const before = wasmStats.redone;
      largeCasesMatch(`fused ${fused}`);
      if (wasmNormals()!.fused) assert.equal(wasmStats.redone, before, 'no block is flagged with a true fused multiply-add');
      else assert.ok(wasmStats.redone > before, 'some blocks took the exact path');
    } finally {
      useFusedNormals(true);
    }
  }
});

test('on an x86-64 CPU with FMA the kernel multiply-adds with the engine\'s fused instruction (relaxed SIMD, checked on cases one rounding decides)', { skip: !(process.arch === 'x64' && /^flags\s*:.*\bfma\b/m.test(cpuInfo())) && 'no FMA on this CPU' }, () => {
  assert.equal(fusedMaddWorks(), true);
  assert.equal(wasmNormals()!.fused, true);
});

test('the fused kernel gives the emulating kernel\'s values (and so the exact JavaScript path\'s), streams of every offset', () => {
  setNoiseKernel('wasm');
  after(() => setNoiseKernel(undefined));
  for (const seed of [1, 99, 12345]) {
    const a = new TorchGenerator(seed).randn(200_003);
    useFusedNormals(false);
    try {
      const b = new TorchGenerator(seed).randn(200_003);
      assert.deepEqual(new Int32Array(a.buffer), new Int32Array(b.buffer), `seed ${seed}`);
    } finally {
      useFusedNormals(true);
    }
  }
});

test('the JavaScript path gives the WebAssembly kernel\'s values', () => {
  setNoiseKernel('wasm');
  after(() => setNoiseKernel(undefined));
  const n = 300_001;
  const a = new TorchGenerator(3).randn(n);
  useWasmNormals(false);
  try {
    assert.equal(wasmNormals(), null);
    const b = new TorchGenerator(3).randn(n);
    assert.deepEqual(new Int32Array(b.buffer), new Int32Array(a.buffer));
  } finally {
    useWasmNormals(true);
  }
});

test('the kernel multiply-adds run unflagged are exact in float64 (log polynomial, the DP3 step)', () => {
  // Each chain depends on one 24-bit integer; the whole range was checked once (stride 1, about 10 s of CPU);
  // the test walks a stride of it. A non-zero TwoSum error would mean float64 rounding before float32.
  const f = Math.fround;
  const P = [7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1].map(f);
  const [SQRTHF, DP1, DP2, DP3, FOPI, TWO_PI] = [0.707106781186547524, -0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8, 1.27323954473516, 2 * Math.PI].map(f) as number[];
  const inexact: string[] = [];
  const exactSum = (a: number, b: number, c: number) => {
    const p = a * b;
    const s = p + c;
    const bv = s - p;
    if (p - (s - bv) + (c - bv) !== 0) inexact.push(`${a} * ${b} + ${c}`);
    return f(s);
  };
  for (let k = 0; k < 1 << 24; k += 89) {
    const m = 0x1000000 - k;
    const bl = 32 - Math.clz32(m);
    let x = m * 2 ** -bl;
    x = x < SQRTHF! ? x + x - 1 : x - 1;
    let y = exactSum(P[0]!, x, P[1]!);
    for (let i = 2; i < 9; i++) y = exactSum(y, x, P[i]!);
    const th = f(TWO_PI! * (k * 2 ** -24));
    const j = (Math.trunc(f(th * FOPI!)) + 1) & ~1;
    exactSum(j, DP3!, f(f(th + j * DP1!) + j * DP2!));
  }
  assert.deepEqual(inexact.slice(0, 5), []);
});

test('draws from one seeker read side by side (two shards written at once) are each their own', () => {
  const states = [0, 3000].map((offset) => ({ offset, cachedNormal: null }));
  const fresh = states.map((s) => {
    const g = new TorchGenerator(5);
    g.mt.skip(s.offset);
    return Array.from(g.randn(3000));
  });
  const seeker = new TorchDrawSeeker(5);
  const [a, b] = states.map((s) => seeker.at(s).randnStream(3000, 'F32'));
  const got = [new Float32Array(3000), new Float32Array(3000)];
  // Interleaved reads: a generator handed out later must not move one still being read.
  for (let at = 0; at < 3000; at += 500) {
    a!.read(got[0]!.subarray(at, at + 500));
    b!.read(got[1]!.subarray(at, at + 500));
  }
  assert.deepEqual(Array.from(got[0]!), fresh[0]);
  assert.deepEqual(Array.from(got[1]!), fresh[1]);
  // A third, after both: still the draws of a fresh generator.
  assert.deepEqual(Array.from(seeker.at({ offset: 6000, cachedNormal: null }).randn(64)), (() => { const g = new TorchGenerator(5); g.mt.skip(6000); return Array.from(g.randn(64)); })());
});

test('a skip of any length lands where drawing the words does, with every kernel\'s twist (native AVX-512, AVX2, portable C, WebAssembly, JavaScript)', () => {
  for (const n of [0, 1, 623, 624, 625, 1247, 1248, 5000, 262_144, 1_000_003]) {
    const drawn = new Mt19937(9);
    drawn.fill(new Int32Array(n), 0, n);
    const want = new Int32Array(32);
    drawn.fill(want, 0, 32);
    if (n < 7) continue;
    for (const k of KERNELS) {
      withKernel(k, () => {
        const mt = new Mt19937(9);
        mt.fill(new Int32Array(7), 0, 7); // from inside a block
        mt.skip(n - 7);
        const got = new Int32Array(32);
        mt.fill(got, 0, 32);
        assert.deepEqual(got, want, `skip ${n}, kernel ${k}`);
        assert.equal(mt.offset, n + 32);
      });
    }
  }
});

test('drawBlocks gives a stream\'s regular blocks with every kernel (native AVX-512, AVX2, portable C, WebAssembly, JavaScript), from any position in a block; whole blocks only', () => {
  const n = 2048 * 16 * 2 + 48; // past one kernel call
  const want = new Float32Array(n + 16);
  const ref = new Mt19937(21);
  ref.skip(5);
  new LargeNormalStream(ref, n + 16, 'F32').readRaw(want);
  for (const k of KERNELS) {
    withKernel(k, () => {
      const mt = new Mt19937(21);
      mt.skip(5);
      const got = new Float32Array(n);
      drawBlocks(mt, got.subarray(0, 1024));
      drawBlocks(mt, got.subarray(1024, 1040)); // a lone block
      drawBlocks(mt, got.subarray(1040));
      assert.deepEqual(Buffer.from(got.buffer), Buffer.from(want.buffer, 0, n * 4), `kernel ${k}`);
      assert.equal(mt.offset, n + 5);
      // The generator goes on from there as the JavaScript one does.
      const next = new Int32Array(3);
      mt.fill(next, 0, 3);
      const check = new Mt19937(21);
      check.skip(n + 5);
      const w = new Int32Array(3);
      check.fill(w, 0, 3);
      assert.deepEqual(next, w, `kernel ${k}: words after`);
    });
  }
  assert.throws(() => drawBlocks(new Mt19937(1), new Float32Array(20)), /whole blocks of 16 values, got 20/);
});

/** The state word that tempering turns into w (tempering is a bijection). */
function untemper(w: number): number {
  let y = w >>> 0;
  y = (y ^ (y >>> 18)) >>> 0;
  let x = y;
  for (let i = 0; i < 3; i++) x = (y ^ ((x << 15) & 0xefc60000)) >>> 0;
  y = x;
  for (let i = 0; i < 5; i++) x = (y ^ ((x << 7) & 0x9d2c5680)) >>> 0;
  y = x;
  for (let i = 0; i < 3; i++) x = (y ^ (x >>> 11)) >>> 0;
  return x | 0;
}

test('the native kernels give the JavaScript path\'s normals for the words at the edges: 1 - u at 1, 2^-24 and either side of sqrt(1/2), every octant of the angle', { skip: !nativeBuilt && 'build/normals.node not built' }, () => {
  // Pairs (k1, k2) of 24-bit integers; each word's top byte set too (the kernel keeps the low 24 bits).
  const k1s = [0, 1, 2, 0xffffff, 0xfffffe, 0x800000, 0x7fffff, 0x4afb0d, 0x4afb0c, 0x4afb0e, 0x12345, 0xabcdef];
  const k2s = [0, 1, 0xffffff, 0x200000, 0x1fffff, 0x400000, 0x3fffff, 0x600000, 0x800000, 0xa00000, 0xc00000, 0xe00000];
  const words: number[] = [];
  for (const a of k1s) for (const b of k2s) words.push(a | 0x5a000000, b | 0xa5000000);
  // Stride through the whole range too.
  for (let k = 0; k < 1 << 24; k += 7919) words.push(k, (k * 2654435761) >>> 8);
  // Blocks of 16 words: 8 first integers, then their 8 partners.
  const blocks = Math.floor(words.length / 16);
  const ordered = new Int32Array(blocks * 16);
  for (let b = 0; b < blocks; b++) for (let j = 0; j < 8; j++) {
    ordered[b * 16 + j] = words[b * 16 + 2 * j]!;
    ordered[b * 16 + 8 + j] = words[b * 16 + 2 * j + 1]!;
  }
  const draw = (k: Kernel) => withKernel(k, () => {
    const out = new Float32Array(ordered.length);
    // 624 words a block of the generator's state, tempered straight from a state set to give them.
    for (let at = 0; at < ordered.length; at += 624) {
      const mt = new Mt19937(1);
      const n = Math.min(624, ordered.length - at);
      Object.assign(mt, { pos: 0, tempered: false });
      const st = (mt as unknown as { state: Int32Array }).state;
      for (let i = 0; i < n; i++) st[i] = untemper(ordered[at + i]!);
      const check = new Int32Array(n);
      mt.clone().fill(check, 0, n);
      assert.deepEqual(check, ordered.subarray(at, at + n), 'untemper inverts tempering');
      drawBlocks(mt, out.subarray(at, at + n));
    }
    return out;
  });
  const js = draw('js');
  for (const k of NATIVE) {
    const got = draw(k);
    for (let i = 0; i < js.length; i++) if (!Object.is(got[i], js[i])) assert.fail(`kernel ${k}: value ${i} is ${got[i]}, JavaScript ${js[i]} (words ${ordered[(i & ~15) + (i & 7)]}, ${ordered[(i & ~15) + (i & 7) + 8]})`);
  }
  assert.ok(js.every((v) => Number.isFinite(v)) && js.some((v) => v > 3) && js.some((v) => v < -3), 'normals finite, tails reached');
});
