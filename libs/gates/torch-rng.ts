import { wasmNormals, WASM_BLOCKS } from './torch-normal-wasm';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type FloatDtype } from '../safetensors/dtype';

/**
 * PyTorch's CPU generator, reproduced bit for bit: what `torch.manual_seed(seed)` followed by `randn` /
 * `rand` / `randn_like` gives on an x86-64 CPU with AVX2 (the kernels of PyTorch 2.x).
 *
 * - The engine is mt19937 seeded with the low 32 bits of the seed; `random()` is one 32-bit output,
 *   `random64()` two (first one high).
 * - `rand`: 24 random bits per value (`(w & 0xffffff) * 2^-24`) in float, cast to the dtype; a 16-bit value
 *   that rounds up to 1 becomes 0.
 * - `randn` of 16 values or more: one 24-bit uniform per value, then Box-Muller on blocks of 16 (values
 *   j and j+8 of a block from the pair (1 - u[j], u[j+8])) with the AVX2 kernel's float log, sin and cos
 *   (Cephes polynomials, the compiler's fused multiply-adds included); when the size is not a multiple of
 *   16, the last 16 values are redrawn from 16 more uniforms. Half types are computed in float, then cast.
 * - `randn` of fewer than 16 values: Box-Muller in double on 53-bit uniforms, one value at a time, the
 *   second value of each pair kept in the generator for the next small draw (until the next seed).
 */

const N = 624;
const M = 397;

export interface TorchRngState {
  /** 32-bit words drawn from mt19937 since the seed. */
  offset: number;
  /** The normal the small-draw path keeps for its next value, if any. */
  cachedNormal: number | null;
}

/** mt19937 with the outputs of each 624-word block tempered at once; words can be skipped untempered. */
export class Mt19937 {
  private readonly state = new Int32Array(N);
  private readonly out = new Int32Array(N);
  /** Next index into `out`; N when the block is used up. */
  private pos = N;
  /** Whether `out` holds the tempered current state. */
  private tempered = false;
  /** Words drawn since the seed. */
  offset = 0;

  constructor(seed: number | bigint) {
    const s = Number(BigInt.asUintN(32, BigInt(seed)));
    const st = this.state;
    st[0] = s;
    for (let j = 1; j < N; j++) {
      const p = st[j - 1]!;
      st[j] = Math.imul(1812433253, p ^ (p >>> 30)) + j;
    }
  }

  private twist(): void {
    const st = this.state;
    let k = 0;
    for (; k < N - M; k++) {
      const y = (st[k]! & 0x80000000) | (st[k + 1]! & 0x7fffffff);
      st[k] = st[k + M]! ^ (y >>> 1) ^ (-(y & 1) & 0x9908b0df);
    }
    for (; k < N - 1; k++) {
      const y = (st[k]! & 0x80000000) | (st[k + 1]! & 0x7fffffff);
      st[k] = st[k + M - N]! ^ (y >>> 1) ^ (-(y & 1) & 0x9908b0df);
    }
    const y = (st[N - 1]! & 0x80000000) | (st[0]! & 0x7fffffff);
    st[N - 1] = st[M - 1]! ^ (y >>> 1) ^ (-(y & 1) & 0x9908b0df);
    this.tempered = false;
  }

  private temper(): void {
    const st = this.state;
    const out = this.out;
    for (let i = 0; i < N; i++) {
      let y = st[i]!;
      y ^= y >>> 11;
      y ^= (y << 7) & 0x9d2c5680;
      y ^= (y << 15) & 0xefc60000;
      y ^= y >>> 18;
      out[i] = y;
    }
    this.tempered = true;
  }

  /** Fills `dst[at .. at+n)` with the next n outputs (as int32 bit patterns). */
  fill(dst: Int32Array, at: number, n: number): void {
    this.offset += n;
    while (n > 0) {
      if (this.pos === N) {
        this.twist();
        this.pos = 0;
      }
      if (!this.tempered) this.temper();
      const k = Math.min(n, N - this.pos);
      dst.set(this.out.subarray(this.pos, this.pos + k), at);
      this.pos += k;
      at += k;
      n -= k;
    }
  }

  next(): number {
    if (this.pos === N) {
      this.twist();
      this.pos = 0;
    }
    if (!this.tempered) this.temper();
    this.offset++;
    return this.out[this.pos++]! >>> 0;
  }

  /** Discards n words (whole blocks are only twisted, not tempered). */
  skip(n: number): void {
    this.offset += n;
    const inBlock = N - this.pos;
    if (n <= inBlock) {
      this.pos += n;
      return;
    }
    n -= inBlock;
    while (n > N) {
      this.twist();
      n -= N;
    }
    this.twist();
    this.pos = n;
  }

  clone(): Mt19937 {
    const c = Object.create(Mt19937.prototype) as Mt19937;
    Object.assign(c, { state: this.state.slice(), out: this.out.slice(), pos: this.pos, tempered: this.tempered, offset: this.offset });
    return c;
  }
}

// ------------------------------------------------------------------------------------------ float maths

const f = Math.fround;
const scratch64 = new Float64Array(1);

/** float32 fused multiply-add, correctly rounded (a, b, c float32 values). */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b; // exact: 48 bits
  const s = p + c;
  const r = f(s);
  const d = s - r;
  // Only a double sum that lands exactly halfway between two floats can round twice the wrong way.
  if (d === 0 || f(s + d) !== s + d) return r;
  const bv = s - p;
  const err = p - (s - bv) + (c - bv);
  if (err === 0) return r;
  const other = s + d;
  return err > 0 === other > r ? other : r;
}
void scratch64;

// Constants of the AVX2 kernel (avx_mathfun.h), as float32.
const LOG_P = [7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1].map(f);
const [P0, P1, P2, P3, P4, P5, P6, P7, P8] = LOG_P as [number, number, number, number, number, number, number, number, number];
const LOG_Q1 = f(-2.1219444e-4);
const LOG_Q2 = f(0.693359375);
const SQRTHF = f(0.707106781186547524);
const DP1 = f(-0.78515625);
const DP2 = f(-2.4187564849853515625e-4);
const DP3 = f(-3.77489497744594108e-8);
const SIN_P0 = f(-1.9515295891e-4);
const SIN_P1 = f(8.3321608736e-3);
const SIN_P2 = f(-1.6666654611e-1);
const COS_P0 = f(2.443315711809948e-5);
const COS_P1 = f(-1.388731625493765e-3);
const COS_P2 = f(4.166664568298827e-2);
const FOPI = f(1.27323954473516);
const TWO_PI = f(2 * Math.PI);
const TWO_M24 = 2 ** -24;
/** 2^-i, for the mantissa of 1 - u. */
const INV_POW2 = Float64Array.from({ length: 33 }, (_, i) => 2 ** -i);

/** Sign flips of the kernel's sincos, by j = (trunc(x·4/π) + 1) & ~1: sine swaps for j & 4, cosine for (j − 2) & 4 clear. */

/**
 * One Box-Muller pair of the AVX2 kernel from two 24-bit integers (u = k·2^-24): writes cos and sin
 * normals to out[i] and out[i + 8]. Every multiply-add the compiler fused is a correctly rounded fmaf.
 */
function pair(k1: number, k2: number, out: Float32Array, i: number): void {
  // log(1 - u1): 1 - u1 = m·2^-24, split as x·2^e with x in [0.5, 1) from the integer m.
  const m = 0x1000000 - k1;
  const bl = 32 - Math.clz32(m);
  let e = bl - 24;
  let x = m * INV_POW2[bl]!;
  if (x < SQRTHF) {
    e -= 1;
    x = x + x - 1;
  } else {
    x = x - 1;
  }
  const z = f(x * x);
  let y = fmaf(P0, x, P1);
  y = fmaf(y, x, P2);
  y = fmaf(y, x, P3);
  y = fmaf(y, x, P4);
  y = fmaf(y, x, P5);
  y = fmaf(y, x, P6);
  y = fmaf(y, x, P7);
  y = fmaf(y, x, P8);
  y = f(y * x);
  y = fmaf(y, z, f(e * LOG_Q1));
  y = f(y - z * 0.5);
  // e·Q2 is exact (Q2 has 9 bits), so the fused add rounds once like a plain one.
  const lg = f(f(x + y) + e * LOG_Q2);
  const radius = f(Math.sqrt(-2 * lg));

  const theta = f(TWO_PI * (k2 * TWO_M24));
  const j = ((Math.trunc(f(theta * FOPI)) + 1) & ~1) >>> 0;
  // y·DP1 and y·DP2 are exact and the sums fit a double, so these fused steps round once.
  let r = f(theta + j * DP1);
  r = f(r + j * DP2);
  r = fmaf(j, DP3, r);
  const zz = f(r * r);
  let c = fmaf(COS_P0, zz, COS_P1);
  c = fmaf(c, zz, COS_P2);
  c = f(c * zz);
  c = fmaf(c, zz, -(zz * 0.5));
  c = f(c + 1);
  let s = fmaf(SIN_P0, zz, SIN_P1);
  s = fmaf(s, zz, SIN_P2);
  s = f(s * zz);
  s = fmaf(s, r, r);
  let sn = j & 2 ? c : s;
  let cs = j & 2 ? s : c;
  if (j & 4) sn = -sn;
  if (!((j - 2) & 4)) cs = -cs;
  // fmadd(n, std = 1, mean = 0): -0 becomes +0.
  out[i] = f(radius * cs) + 0;
  out[i + 8] = f(radius * sn) + 0;
}

/** 16 normals from 16 consecutive words (the kernel's block). */
function block16(words: Int32Array, w: number, out: Float32Array, o: number): void {
  for (let j = 0; j < 8; j++) pair(words[w + j]! & 0xffffff, words[w + j + 8]! & 0xffffff, out, o + j);
}

function roundTo(dtype: FloatDtype, x: number): number {
  if (dtype === 'BF16') return bf16BitsToF32(f32ToBf16Bits(x));
  if (dtype === 'F16') return f16BitsToF32(f32ToF16Bits(x));
  return f(x);
}

export const TORCH_SMALL_NORMAL = 16;

/** How many words a draw takes; the small-normal path depends on the cached value (see `state`). */
export function wordsOf(fn: 'randn' | 'rand', n: number, dtype: FloatDtype, cached: boolean): { words: number; cachedAfter: boolean } {
  if (fn === 'rand') return { words: n, cachedAfter: cached };
  if (n >= TORCH_SMALL_NORMAL) return { words: n % 16 === 0 ? n : dtype === 'F32' ? n + 16 : n - (n % 16) + 16, cachedAfter: cached };
  const fresh = Math.max(0, n - (cached ? 1 : 0));
  const pairs = Math.ceil(fresh / 2);
  return { words: pairs * 4, cachedAfter: (cached && n === 0) || fresh % 2 === 1 };
}

/**
 * A stream of `randn` values of one call of n ≥ 16 values, read front to back in chunks, so a tensor of
 * billions of values needs no buffer of its size. Reads words from `mt` as the kernel does; blocks are
 * computed many at a time by the WebAssembly kernel where there is one.
 */
export class LargeNormalStream {
  private pos = 0;
  private readonly tailFrom: number;
  private readonly start: number;
  /** Blocks of the regular part (the ones that start before tailFrom). */
  private readonly regularBlocks: number;
  private readonly buf: Float32Array;
  private readonly words: Int32Array;
  /** Positions held in buf. */
  private bufFrom = 0;
  private bufTo = 0;

  constructor(
    private readonly mt: Mt19937,
    readonly n: number,
    private readonly dtype: FloatDtype,
  ) {
    if (n < TORCH_SMALL_NORMAL) throw new Error(`LargeNormalStream needs 16 values or more, got ${n}`);
    this.tailFrom = n % 16 ? n - 16 : n;
    this.start = mt.offset;
    this.regularBlocks = Math.ceil(this.tailFrom / 16);
    const blocks = Math.min(WASM_BLOCKS, this.regularBlocks + 1);
    this.buf = new Float32Array(blocks * 16);
    this.words = new Int32Array(blocks * 16);
  }

  /** Computes the next regular blocks, from the one holding position p, into buf. */
  private fillRegular(p: number): void {
    const first = p >> 4;
    const k = Math.min(this.buf.length >> 4, this.regularBlocks - first);
    const wasm = wasmNormals();
    if (wasm) {
      this.mt.fill(wasm.words, 0, k * 16);
      wasm.run(k);
      this.buf.set(wasm.out.subarray(0, k * 16));
      // A flagged block has a float64 sum halfway between two floats: redo it with exact fused multiply-adds.
      for (let b = 0; b < k; b++) if (wasm.flags[b]) block16(wasm.words, b * 16, this.buf, b * 16);
    } else {
      this.mt.fill(this.words, 0, k * 16);
      for (let b = 0; b < k; b++) block16(this.words, b * 16, this.buf, b * 16);
    }
    this.bufFrom = first * 16;
    this.bufTo = (first + k) * 16;
  }

  /** The last 16 values when n is not a multiple of 16: redrawn from 16 more words. */
  private fillTail(): void {
    // float32 draws every uniform first, so the partial block's words are drawn but unused; the 16-bit
    // types draw block by block. Either way the last 16 values come from 16 more words.
    if (this.dtype === 'F32') this.mt.skip(this.start + this.n - this.mt.offset);
    this.mt.fill(this.words, 0, 16);
    block16(this.words, 0, this.buf, 0);
    this.bufFrom = this.tailFrom;
    this.bufTo = this.n;
  }

  /** Writes the next out.length values (float32 numbers, already rounded to the dtype). */
  read(out: Float32Array): void {
    const want = out.length;
    if (this.pos + want > this.n) throw new Error(`read past the end of a ${this.n}-value draw`);
    let o = 0;
    while (o < want) {
      const p = this.pos;
      const inTail = p >= this.tailFrom;
      if (p < this.bufFrom || p >= this.bufTo || (inTail && this.bufFrom !== this.tailFrom)) {
        if (inTail) this.fillTail();
        else this.fillRegular(p);
      }
      const end = Math.min(inTail ? this.n : Math.min(this.bufTo, this.tailFrom), p + (want - o));
      out.set(this.buf.subarray(p - this.bufFrom, end - this.bufFrom), o);
      o += end - p;
      this.pos = end;
    }
    if (this.dtype !== 'F32') for (let i = 0; i < want; i++) out[i] = roundTo(this.dtype, out[i]!);
  }
}

/** `torch.Generator` on the CPU after `manual_seed(seed)`. */
export class TorchGenerator {
  mt: Mt19937;
  cachedNormal: number | null = null;

  constructor(readonly seed: number | bigint) {
    this.mt = new Mt19937(seed);
  }

  state(): TorchRngState {
    return { offset: this.mt.offset, cachedNormal: this.cachedNormal };
  }

  private uniform53(): number {
    const hi = this.mt.next();
    const lo = this.mt.next();
    // (hi << 32 | lo) & (2^53 - 1), times 2^-53
    return ((hi & 0x1fffff) * 4294967296 + lo) * 2 ** -53;
  }

  /** One value of the small-draw path (double Box-Muller with a cached second value). */
  private smallNormal(): number {
    if (this.cachedNormal !== null) {
      const v = this.cachedNormal;
      this.cachedNormal = null;
      return v;
    }
    const u1 = this.uniform53();
    const u2 = this.uniform53();
    const r = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = 2 * Math.PI * u1;
    this.cachedNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** `torch.randn(n, dtype)` (contiguous), as float32 numbers rounded to the dtype. */
  randn(n: number, dtype: FloatDtype = 'F32'): Float32Array {
    const out = new Float32Array(n);
    if (n >= TORCH_SMALL_NORMAL) new LargeNormalStream(this.mt, n, dtype).read(out);
    else for (let i = 0; i < n; i++) out[i] = roundTo(dtype, this.smallNormal());
    return out;
  }

  /** A large `randn` read in chunks (n ≥ 16). */
  randnStream(n: number, dtype: FloatDtype): LargeNormalStream {
    return new LargeNormalStream(this.mt, n, dtype);
  }

  /** `torch.rand(n, dtype)`. */
  rand(n: number, dtype: FloatDtype = 'F32'): Float32Array {
    const out = new Float32Array(n);
    const words = new Int32Array(Math.min(n, 1 << 16));
    for (let i = 0; i < n; i += words.length) {
      const k = Math.min(words.length, n - i);
      this.mt.fill(words, 0, k);
      for (let j = 0; j < k; j++) {
        const u = (words[j]! & 0xffffff) * TWO_M24;
        const v = dtype === 'F32' ? u : roundTo(dtype, u);
        out[i + j] = v === 1 ? 0 : v;
      }
    }
    return out;
  }
}
