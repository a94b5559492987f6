/**
 * Elementwise float kernels as WebAssembly SIMD, four values per step, built with the assembler of libs/wasm (no
 * toolchain, no binary in the repository): casts between float32, bfloat16 and float16, rounding float32 values
 * to a 16-bit type, and expert noise `w + round(round(n) * scale)` in a tensor's own dtype. Every result is
 * the bits the scalar functions of dtype.ts give (round to nearest even, infinities, subnormals, NaN kept
 * quiet with its sign); the tests compare them value by value, the edge cases included.
 */

import { DTYPE_SIZES, type FloatDtype } from './dtype-table';
import { f16ToF32, f32ToBf16, f32ToF16, funcType, get, F32, I32, i32c, loadBits, loop, set, simd, splat, V, V128, wasmApi, wasmModule, Scratch, type Code, type WasmFunction, type WasmMemory } from '../wasm';

/** The kernels' dtypes: the output float dtypes. */
export type Dt = FloatDtype;

/** float32 bits -> half bits (i32 lanes), round to nearest even, overflow to infinity, subnormals kept; a NaN quiet, its top payload bits kept. */
const f32ToF16Quiet = (s: Scratch): Code => f32ToF16(s, (a) => [...get(a), ...i32c(13), ...V.shrU, ...splat(0x3ff), ...V.and, ...splat(0x7e00), ...V.or]);

function fromF32Bits(dt: Dt, s: Scratch): Code {
  return dt === 'F32' ? [] : dt === 'BF16' ? f32ToBf16(s) : f32ToF16Quiet(s);
}

/** float32 bits rounded to `dt` and back; `finite`: the values are never NaN (no NaN case needed). */
function roundBits(dt: Dt, s: Scratch, finite = false): Code {
  if (dt === 'F32') return [];
  if (dt === 'BF16') {
    if (!finite) return [...f32ToBf16(s), ...i32c(16), ...V.shl];
    const b = s.get();
    return [...set(b), ...get(b), ...splat(0x7fff), ...V.add, ...get(b), ...i32c(16), ...V.shrU, ...splat(1), ...V.and, ...V.add, ...splat(0xffff0000 | 0), ...V.and];
  }
  if (!finite) return [...f32ToF16Quiet(s), ...f16ToF32(s)];
  // Finite values rounded to half's precision without leaving float32: 13 bits dropped (to nearest even) in
  // half's normal range, a multiple of 2^-24 below it (adding and subtracting 0.5 rounds there), infinity
  // from 65520 up.
  const b = s.get(), a = s.get(), r = s.get();
  return [
    ...set(b),
    ...get(b), ...splat(0x7fffffff), ...V.and, ...set(a),
    ...get(a), ...splat(0xfff), ...V.add, ...get(a), ...i32c(13), ...V.shrU, ...splat(1), ...V.and, ...V.add, ...splat(~0x1fff), ...V.and,
    ...get(a), ...splat(126 << 23), ...V.fadd, ...splat(126 << 23), ...V.fsub,
    ...get(a), ...splat(113 << 23), ...V.geS,
    ...V.bitselect, ...set(r),
    ...splat(0x7f800000), ...get(r), ...get(r), ...splat(143 << 23), ...V.geS, ...V.bitselect,
    ...get(b), ...splat(0x80000000 | 0), ...V.and, ...V.or,
  ];
}

const size = (dt: Dt) => DTYPE_SIZES[dt]!;

/** A loop over n values `lanes` at a time; `ptrs` are i32 locals advanced by their element size each round. */
const loop4 = (n: number, ptrs: [number, number][], body: Code, lanes = 4): Code => loop(n, ptrs.map(([p, step]) => [p, step * lanes]), body, lanes);

/** A kernel of `vLocals` scratch v128 locals. */
const kernel = (name: string, type: number, vLocals: number, code: Code): WasmFunction => ({ name, type, locals: [[vLocals, V128]], code });

/** cast(n, src, dst): n values of `from` at src to `to` at dst, eight a round (16-bit results fill one store). */
function castFn(from: Dt, to: Dt): WasmFunction {
  const s = new Scratch(3);
  const half = (h: number): Code => [...get(1), ...loadBits(from, s, h * 4), ...fromF32Bits(to, s)];
  const body = to === 'F32'
    ? [...get(2), ...half(0), ...V.storeAt(0), ...get(2), ...half(1), ...V.storeAt(16)]
    : [...get(2), ...half(0), ...half(1), ...V.narrowU16, ...V.store];
  return kernel(`cast_${from}_${to}`, 0, s.count, loop4(0, [[1, size(from)], [2, size(to)]], body, 8));
}

/** round(n, src, dst): float32 values rounded to `dt` (still float32). */
function roundFn(dt: Dt): WasmFunction {
  const s = new Scratch(3);
  const body = [...get(2), ...get(1), ...V.load, ...roundBits(dt, s), ...V.store];
  return kernel(`round_${dt}`, 0, s.count, loop4(0, [[1, 4], [2, 4]], body));
}

/** noise(n, scale, src, norm, dst): w + round(round(n)·scale), each op in float32 rounded to `dt` (the reference's W + randn_like(W)·s in W's dtype). */
function noiseFn(dt: Dt): WasmFunction {
  // params: 0 n, 1 scale (f32), 2 src, 3 norm, 4 dst
  // Eight values a round: two halves of four. Normals and their products are finite (no NaN case).
  const s = new Scratch(5);
  const half = (h: number): Code => [
    ...get(2), ...loadBits(dt, s, h * 4),
    ...get(3), ...V.loadAt(h * 16), ...roundBits(dt, s, true), ...get(1), ...V.fsplat, ...V.fmul, ...roundBits(dt, s, true),
    ...V.fadd,
    ...fromF32Bits(dt, s),
  ];
  const body = dt === 'F32'
    ? [...get(4), ...half(0), ...V.storeAt(0), ...get(4), ...half(1), ...V.storeAt(16)]
    : [...get(4), ...half(0), ...half(1), ...V.narrowU16, ...V.store];
  return kernel(`noise_${dt}`, 1, s.count, loop4(0, [[2, size(dt)], [3, 4], [4, size(dt)]], body, 8));
}

/** scale(n, s, src, dst): round(w·s) in `dt` (residual_scale), eight values a round. */
function scaleFn(dt: Dt): WasmFunction {
  // params: 0 n, 1 s (f32), 2 src, 3 unused, 4 dst (the noise function's type)
  const sc = new Scratch(5);
  const half = (h: number): Code => [...get(2), ...loadBits(dt, sc, h * 4), ...get(1), ...V.fsplat, ...V.fmul, ...fromF32Bits(dt, sc)];
  const body = dt === 'F32'
    ? [...get(4), ...half(0), ...V.storeAt(0), ...get(4), ...half(1), ...V.storeAt(16)]
    : [...get(4), ...half(0), ...half(1), ...V.narrowU16, ...V.store];
  return kernel(`scale_${dt}`, 1, sc.count, loop4(0, [[2, size(dt)], [4, size(dt)]], body, 8));
}

/**
 * nonfinite_<dt>(n, src, dst): an i32 at dst, non-zero when one of n values at src (a whole number of vectors
 * read: the caller zeroes the bytes past its values) has an all-ones exponent (infinity or NaN).
 */
function nonFiniteFn(dt: Dt): WasmFunction {
  const sixteen = dt !== 'F32';
  const m = dt === 'F32' ? 0x7f800000 : dt === 'BF16' ? 0x7f807f80 : 0x7c007c00;
  // Lanes of the value's width: i16x8.eq or i32x4.eq of (bits & exponent) with the exponent; or-ed into local 3.
  const body = [...get(3), ...get(1), ...V.load, ...splat(m), ...V.and, ...splat(m), ...(sixteen ? simd(0x2d) : V.eq), ...V.or, ...set(3)];
  return { name: `nonfinite_${dt}`, type: 0, locals: [[1, V128]], code: [...loop(0, [[1, 16]], body, sixteen ? 8 : 4), ...get(2), ...get(3), ...simd(0x53), 0x36, 2, 0] };
}

/**
 * widen_<dt>(n, src, dst): n 16-bit values (n a multiple of 16) to float32, sixteen a round. All of a round's
 * loads come before its stores, so it also runs in place with src = dst + 2n (see WasmFloatBuffer.widen).
 */
function widenFn(dt: 'BF16' | 'F16'): WasmFunction {
  let body: Code;
  let vLocals: number;
  if (dt === 'BF16') {
    // Two 16-byte loads, each interleaved with zero words: a bfloat16 is the upper half of its float32.
    const zero = 3, a = 4, b = 5; // v128 locals start zeroed
    const low = [0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23];
    const high = [8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31];
    const put = (v: number, lanes: number[], at: number): Code => [...get(2), ...get(zero), ...get(v), ...simd(0x0d), ...lanes, ...V.storeAt(at)];
    body = [
      ...get(1), ...V.loadAt(0), ...set(a),
      ...get(1), ...V.loadAt(16), ...set(b),
      ...put(a, low, 0), ...put(a, high, 16), ...put(b, low, 32), ...put(b, high, 48),
    ];
    vLocals = 3;
  } else {
    const s = new Scratch(3);
    const quads = [0, 1, 2, 3].map(() => s.get());
    body = [
      ...quads.flatMap((r, q) => [...get(1), ...loadBits('F16', s, 4 * q), ...set(r)]),
      ...quads.flatMap((r, q) => [...get(2), ...get(r), ...V.storeAt(16 * q)]),
    ];
    vLocals = s.count;
  }
  return kernel(`widen_${dt}`, 0, vLocals, loop4(0, [[1, 2], [2, 4]], body, 16));
}

const DTS: Dt[] = ['F32', 'BF16', 'F16'];

/** Values per call: the caller copies at most this many into `src` at a time. */
export const FLOAT_CAP = 1 << 16;

/** src, norm, dst regions of FLOAT_CAP float32 values each (+64 bytes: the last round may pass n). */
const REGION = FLOAT_CAP * 4 + 64;
/** Where the torch generator's kernel (torch-normal-wasm.ts) puts its buffers in the shared memory. */
export const FLOAT_END = 3 * REGION;
/** Both modules share one memory (its pages), so the noise kernel reads the normals where the generator wrote them. */
export const SHARED_PAGES = Math.ceil(FLOAT_END / 65536) + 64;

let memory: WasmMemory | undefined;
/** The memory both modules import as env.memory (SHARED_PAGES pages, never grown). */
export function sharedMemory(): WasmMemory {
  return (memory ??= new (wasmApi().Memory)({ initial: SHARED_PAGES }));
}
// type 0: (i32 n, i32 src, i32 dst); type 1: (i32 n, f32 scale, i32 src, i32 norm, i32 dst)
const TYPES = [funcType([I32, I32, I32]), funcType([I32, F32, I32, I32, I32])];
const moduleBytes = (fns: WasmFunction[], pages = SHARED_PAGES): Uint8Array => wasmModule(TYPES, fns, pages);

/**
 * This file's modules, by name, as assembled from the code above. scripts/build.mjs assembles them once and puts
 * their bytes into the bundles (__FLOAT_WASM__, base64 by name): a command assembling the kernels' module spent
 * ~40 ms of its main thread on it, beside the forward pass. Run from source (tests), they are assembled here.
 */
export const FLOAT_WASM_MODULES = {
  kernels: () => {
    const fns: WasmFunction[] = [];
    for (const a of DTS) for (const b of DTS) if (a !== b) fns.push(castFn(a, b));
    for (const d of DTS) fns.push(roundFn(d), noiseFn(d), scaleFn(d), nonFiniteFn(d));
    return moduleBytes(fns);
  },
  widen: () => moduleBytes([widenFn('BF16'), widenFn('F16')], 0),
  casts: () => moduleBytes(DTS.flatMap((a) => DTS.filter((b) => b !== a).map((b) => castFn(a, b))), 0),
} as const;

declare const __FLOAT_WASM__: string | undefined;
let built: Record<string, string> | undefined;

/** A module's bytes: the build's where this runs from a bundle, else assembled now. */
function wasmBytes(name: keyof typeof FLOAT_WASM_MODULES): Uint8Array {
  built ??= typeof __FLOAT_WASM__ === 'string' ? (JSON.parse(__FLOAT_WASM__) as Record<string, string>) : {};
  const b64 = built[name];
  return b64 !== undefined ? Buffer.from(b64, 'base64') : FLOAT_WASM_MODULES[name]();
}

export interface FloatKernels {
  /** Input values (raw little-endian bytes of the source dtype). */
  src: Uint8Array;
  /** float32 normals for `noise`. */
  norm: Float32Array;
  /** Output values. */
  dst: Uint8Array;
  /** n values (n ≤ FLOAT_CAP) of `from` in src to `to` in dst. */
  cast(from: Dt, to: Dt, n: number): void;
  /** float32 values in src rounded to dt, into dst as float32. */
  round(dt: Dt, n: number): void;
  /** The same at byte addresses of the shared memory. */
  roundAt(dt: Dt, n: number, src: number, dst: number): void;
  /** dst as float32 values. */
  dstF32: Float32Array;
  /** dst = src + round(round(norm)·scale), in dt. */
  noise(dt: Dt, n: number, scale: number): void;
  /** The same at byte addresses of the shared memory (normals written by the torch generator's kernel). */
  noiseAt(dt: Dt, n: number, scale: number, src: number, norm: number, dst: number): void;
  /** dst = round(src·s) in dt. */
  scale(dt: Dt, n: number, s: number): void;
  /** Whether one of n values of dt in src is infinite or NaN (n ≤ FLOAT_CAP). */
  anyNonFinite(dt: Dt, n: number): boolean;
  /** Byte addresses of src, norm and dst. */
  SRC: number;
  NORM: number;
  DST: number;
}

let instance: FloatKernels | null | undefined;
let enabled = true;

/** Turns the WebAssembly kernels off or on (tests compare them with the scalar JavaScript path). */
export function useFloatWasm(on: boolean): void {
  enabled = on;
}

/** Whether this process has compiled the kernels (or found it cannot): the next floatKernels() costs nothing. */
export const floatKernelsSettled = (): boolean => instance !== undefined;

/** The kernels, or null where WebAssembly SIMD is unavailable or turned off. */
export function floatKernels(): FloatKernels | null {
  if (!enabled) return null;
  if (instance !== undefined) return instance;
  try {
    const wa = wasmApi();
    const inst = new wa.Instance(new wa.Module(wasmBytes('kernels')), { env: { memory: sharedMemory() } });
    const mem = sharedMemory().buffer;
    const region = REGION;
    const SRC = 0, NORM = region, DST = 2 * region;
    const ex = inst.exports as Record<string, (...a: number[]) => void>;
    const bytes = Buffer.from(mem);
    instance = {
      src: new Uint8Array(mem, SRC, region),
      norm: new Float32Array(mem, NORM, region / 4),
      dst: new Uint8Array(mem, DST, region),
      cast: (from, to, n) => ex[`cast_${from}_${to}`]!(n, SRC, DST),
      round: (dt, n) => ex[`round_${dt}`]!(n, SRC, DST),
      roundAt: (dt, n, src, dst) => ex[`round_${dt}`]!(n, src, dst),
      dstF32: new Float32Array(mem, DST, region / 4),
      noise: (dt, n, scale) => ex[`noise_${dt}`]!(n, scale, SRC, NORM, DST),
      noiseAt: (dt, n, scale, src, norm, dst) => ex[`noise_${dt}`]!(n, scale, src, norm, dst),
      scale: (dt, n, s) => ex[`scale_${dt}`]!(n, s, SRC, 0, DST),
      anyNonFinite(dt, n) {
        // The last vector may pass the values: zeros there are finite.
        const end = SRC + n * size(dt);
        bytes.fill(0, end, end + 16);
        ex[`nonfinite_${dt}`]!(n, SRC, DST);
        return bytes.readInt32LE(DST) !== 0;
      },
      SRC,
      NORM,
      DST,
    };
  } catch (e) {
    if (process.env.MOE_FORGE_DEBUG_WASM) console.error(e);
    instance = null;
  }
  return instance;
}


/** Casts raw bytes of `from` into `out` (bytes of `to`) through the kernels, FLOAT_CAP values at a time. */
export function castThrough(k: FloatKernels, src: Uint8Array, from: Dt, to: Dt, out: Uint8Array): void {
  const a = size(from), b = size(to);
  const n = src.length / a;
  for (let off = 0; off < n; off += FLOAT_CAP) {
    const m = Math.min(FLOAT_CAP, n - off);
    k.src.set(src.subarray(off * a, (off + m) * a));
    k.cast(from, to, m);
    out.set(k.dst.subarray(0, m * b), off * b);
  }
}

/** Raw bytes of `dt` times s (a float32), rounded to `dt`, through the kernels; `out` may be `src` itself. */
export function scaleThrough(k: FloatKernels, src: Uint8Array, dt: Dt, s: number, out: Buffer = Buffer.allocUnsafe(src.length)): Buffer {
  const b = size(dt);
  const n = src.length / b;
  for (let off = 0; off < n; off += FLOAT_CAP) {
    const m = Math.min(FLOAT_CAP, n - off);
    k.src.set(src.subarray(off * b, (off + m) * b));
    k.scale(dt, m, s);
    out.set(k.dst.subarray(0, m * b), off * b);
  }
  return out;
}

const PAGE = 65536;
/** A 32-bit memory addresses at most 4 GiB: 2^30 float32 values. */
const MAX_PAGES = 65536;
let widenModule: object | null | undefined;
let widenCompile: Promise<void> | undefined;
const widenBytes = () => wasmBytes('widen');
type WidenKernels = Record<'BF16' | 'F16', (n: number, src: number, dst: number) => void>;

/** float32 bits of a half, exact (NaN payloads kept, as the kernels keep them). */
function halfBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 0x1f;
  let m = h & 0x3ff;
  if (e === 0x1f) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e !== 0) return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
  if (m === 0) return sign >>> 0;
  let exp = 113; // subnormal: normalised by shifting its leading one up to the implicit bit
  while (!(m & 0x400)) {
    m <<= 1;
    exp--;
  }
  return (sign | (exp << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** Values [from, n) of the in-place layout widened one at a time (kernel tails; no SIMD at all). */
function widenScalar(mem: ArrayBuffer, n: number, from: number, to: number, dtype: 'BF16' | 'F16'): void {
  // Going forward in place is safe here too: value i is read at bytes 2n + 2i before bytes 4i.. are written.
  const src = new Uint16Array(mem, 2 * n, n);
  const dst = new Uint32Array(mem, 0, n);
  if (dtype === 'BF16') for (let i = from; i < to; i++) dst[i] = src[i]! << 16;
  else for (let i = from; i < to; i++) dst[i] = halfBits(src[i]!);
}

/**
 * A float32 buffer in a WebAssembly memory of its own, so that the SIMD kernels widen 16-bit values where they
 * lie: bytes read into the upper half of the first n values become those n float32 values, with no copy into
 * or out of the kernels' memory. The Float32Array views it hands out can back onnxruntime tensors directly.
 */
export class WasmFloatBuffer {
  /** undefined until the first widen: the module compiles then, once per process, while reads run. */
  private kernels: WidenKernels | null | undefined;

  private constructor(private readonly memory: WasmMemory, simd: boolean) {
    if (!simd) this.kernels = null;
  }

  /**
   * A buffer, or null where the kernels are turned off or WebAssembly SIMD proved unavailable. `simd: false`
   * widens in JavaScript (the path taken where the kernels fail to compile).
   */
  static create(simd = true): WasmFloatBuffer | null {
    if (!enabled || widenModule === null) return null;
    try {
      return new WasmFloatBuffer(new (wasmApi().Memory)({ initial: 0, maximum: MAX_PAGES }), simd);
    } catch (e) {
      if (process.env.MOE_FORGE_DEBUG_WASM) console.error(e);
      return null; // no address space for another memory now: this buffer is a plain one
    }
  }

  /**
   * Compiles the widening kernels on V8's background threads, so that the first widen() finds them ready
   * (it compiles them itself, on the calling thread, if they are not).
   */
  static prepare(): Promise<void> {
    return (widenCompile ??= (async () => {
      if (widenModule !== undefined || !enabled) return;
      try {
        const compiled = await wasmApi().compile(widenBytes());
        widenModule ??= compiled;
      } catch (e) {
        if (process.env.MOE_FORGE_DEBUG_WASM) console.error(e);
        widenModule ??= null;
      }
    })());
  }

  private widenKernels(): WidenKernels | null {
    if (this.kernels !== undefined) return this.kernels;
    const wa = wasmApi();
    try {
      widenModule ??= new wa.Module(widenBytes());
    } catch (e) {
      if (process.env.MOE_FORGE_DEBUG_WASM) console.error(e);
      widenModule = null; // no SIMD here: later buffers are plain ones
    }
    if (!widenModule) return (this.kernels = null);
    const ex = new wa.Instance(widenModule, { env: { memory: this.memory } }).exports as Record<string, (n: number, src: number, dst: number) => void>;
    return (this.kernels = { BF16: ex.widen_BF16!, F16: ex.widen_F16! });
  }

  /** Float32 values the memory holds now. */
  get capacity(): number {
    return this.memory.buffer.byteLength / 4;
  }

  /**
   * The first n values, the memory grown to hold them (which invalidates views handed out before). Values
   * past what the last user wrote are stale: callers overwrite all n. RangeError beyond 2^30 values or when
   * the memory cannot grow.
   */
  floats(n: number): Float32Array {
    const pages = Math.ceil((4 * n) / PAGE);
    const have = this.memory.buffer.byteLength / PAGE;
    if (pages > MAX_PAGES) throw new RangeError(`${n} float32 values exceed a WebAssembly memory`);
    if (pages > have) this.memory.grow(pages - have);
    return new Float32Array(this.memory.buffer, 0, n);
  }

  /** The n 16-bit values in bytes [2n, 4n) become float32 values [0, n), in place. */
  widen(n: number, dtype: 'BF16' | 'F16'): void {
    this.widenRange(n, 0, n, dtype);
  }

  /**
   * Values [from, to) of the n 16-bit values in bytes [2n, 4n) become float32 values [from, to), in place. The
   * ranges of a buffer go in order (values above `to` may still be arriving while this one runs: none of its
   * writes reach them).
   */
  widenRange(n: number, from: number, to: number, dtype: 'BF16' | 'F16'): void {
    if (4 * n > this.memory.buffer.byteLength) throw new RangeError(`widen of ${n} values past the buffer (${this.capacity})`);
    if (!(0 <= from && from <= to && to <= n)) throw new RangeError(`widen of values ${from}..${to} outside 0..${n}`);
    const k = this.widenKernels();
    // The kernels move 16 values a round and must not run past `to`: the last few are widened after them, in
    // JavaScript (their source lies above every byte the kernels write: 4m <= 2n + 2m).
    const m = k ? to - from - ((to - from) % 16) : 0;
    // In place going forward: a round of k values at i reads bytes 2n + 2i .. 2n + 2(i + k) before it writes
    // 4i .. 4(i + k), which lies below the next round's bytes (4(i + k) <= 2n + 2(i + k) while i + k <= n).
    if (m > 0) k![dtype](m, 2 * n + 2 * from, 4 * from);
    widenScalar(this.memory.buffer, n, from + m, to, dtype);
  }
}

let chunkModule: object | null | undefined;

/**
 * A chunk of bytes in a WebAssembly memory of its own, with the cast kernels bound to it, so that values read
 * into it are cast where they lie (no copy into or out of the kernels' buffers). Its size is fixed: views of
 * it stay valid while it lives.
 */
export class WasmChunk {
  private constructor(
    readonly buffer: ArrayBuffer,
    private readonly kernels: Record<string, (n: number, src: number, dst: number) => void>,
  ) {}

  /** A chunk of at least `bytes` bytes, or null where WebAssembly SIMD is unavailable or the kernels are off. */
  static create(bytes: number): WasmChunk | null {
    if (!enabled || chunkModule === null) return null;
    const wa = wasmApi();
    try {
      // Compiled once per process; each chunk instantiates it on its own memory.
      chunkModule ??= new wa.Module(wasmBytes('casts'));
    } catch (e) {
      if (process.env.MOE_FORGE_DEBUG_WASM) console.error(e);
      chunkModule = null;
      return null;
    }
    try {
      // The kernels move eight values a round and may run up to seven past n: 64 bytes of slack.
      const memory = new wa.Memory({ initial: Math.ceil((bytes + 64) / PAGE) });
      const ex = new wa.Instance(chunkModule, { env: { memory } }).exports as Record<string, (n: number, src: number, dst: number) => void>;
      return new WasmChunk(memory.buffer, ex);
    } catch (e) {
      if (process.env.MOE_FORGE_DEBUG_WASM) console.error(e);
      return null;
    }
  }

  /**
   * The n values of `from` at the start of the chunk become n values of `to` there, when `to` is no wider:
   * each round loads its values before it stores, and its stores end below the next round's loads.
   */
  castInPlace(n: number, from: Dt, to: Dt): void {
    if (size(to) > size(from)) throw new RangeError(`an in-place cast cannot widen ${from} to ${to}`);
    if (n * size(from) + 64 > this.buffer.byteLength) throw new RangeError(`${n} values of ${from} exceed the chunk (${this.buffer.byteLength} bytes)`);
    if (from !== to && n > 0) this.kernels[`cast_${from}_${to}`]!(n, 0, 0);
  }
}
