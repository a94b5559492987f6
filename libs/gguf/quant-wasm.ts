/**
 * GGUF encodings as WebAssembly SIMD kernels, built from an instruction list as libs/safetensors/float-wasm.ts
 * builds its casts (no toolchain, no binary in the repository): source values (F32, BF16, F16) decoded and
 * encoded in one pass into Q8_0 blocks, F16, BF16 or F32. Every byte is the one quant.ts's scalar kernels
 * give (gguf-py's numpy arithmetic): Q8_0's scale amax / 127 and its inverse in float32, the products
 * rounded to float32, numpy's round half away from zero (floor(a) + floor(2 (a - floor(a)))), NaN and
 * infinite products as 0, a NaN block's scale the float16 NaN 0x7e00; F16 as numpy's cast (NaN payloads
 * kept, not made quiet); BF16 as ggml's (NaN made quiet). test/gguf/quant-wasm.test.ts compares them.
 */
import { sleb, simd, uleb, wasmApi, type WasmMemory } from '../safetensors';
import { Q8_0_BLOCK, Q8_0_BYTES } from './quant';

type Code = number[];
export type SrcDtype = 'F32' | 'BF16' | 'F16';
export type DstType = 'Q8_0' | 'F16' | 'BF16' | 'F32';

const get = (i: number): Code => [0x20, ...uleb(i)];
const set = (i: number): Code => [0x21, ...uleb(i)];
const i32c = (v: number): Code => [0x41, ...sleb(v | 0)];
const splat = (v: number): Code => [...simd(0x0c), ...new Uint8Array(new Int32Array([v, v, v, v]).buffer)];
const fsplat = (v: number): Code => [...simd(0x0c), ...new Uint8Array(new Float32Array([v, v, v, v]).buffer)];
// Alignment hint 0 (byte): sources and blocks (34 bytes) sit at any address.
const V = {
  loadAt: (off: number): Code => [...simd(0x00), 0, ...uleb(off)],
  load16x4uAt: (off: number): Code => [...simd(0x04), 0, ...uleb(off)],
  storeAt: (off: number): Code => [...simd(0x0b), 0, ...uleb(off)],
  /** The low 64 bits (four 16-bit values after a narrow). */
  store64At: (off: number): Code => [...simd(0x5b), 0, ...uleb(off), 0],
  /** Lane 0's low 16 bits. */
  store16At: (off: number): Code => [...simd(0x59), 0, ...uleb(off), 0],
  shuffle: (lanes: number[]): Code => [...simd(0x0d), ...lanes],
  narrowU16: simd(0x86),
  narrowS16: simd(0x85),
  narrowS8: simd(0x65),
  and: simd(0x4e),
  andnot: simd(0x4f),
  or: simd(0x50),
  xor: simd(0x51),
  bitselect: simd(0x52),
  eq: simd(0x37),
  gtS: simd(0x3b),
  geS: simd(0x3f),
  shl: simd(0xab),
  shrS: simd(0xac),
  shrU: simd(0xad),
  maxS: simd(0xb8),
  add: simd(0xae),
  sub: simd(0xb1),
  feq: simd(0x41),
  fne: simd(0x42),
  flt: simd(0x43),
  fge: simd(0x46),
  fabs: simd(0xe0),
  fadd: simd(0xe4),
  fsub: simd(0xe5),
  fmul: simd(0xe6),
  fdiv: simd(0xe7),
  ffloor: simd(0x68),
};

class Scratch {
  next: number;
  constructor(readonly first: number) {
    this.next = first;
  }
  get(): number {
    return this.next++;
  }
  get count(): number {
    return this.next - this.first;
  }
}

const SIZE: Record<SrcDtype, number> = { F32: 4, BF16: 2, F16: 2 };

/** float32 bits of four `dt` values at the address on the stack + `at` values. */
function loadBits(dt: SrcDtype, s: Scratch, at: number): Code {
  if (dt === 'F32') return V.loadAt(at * 4);
  if (dt === 'BF16') return [...V.load16x4uAt(at * 2), ...i32c(16), ...V.shl];
  return [...V.load16x4uAt(at * 2), ...f16ToF32(s)];
}

/** half bits (i32 lanes) -> float32 bits, exact, NaN payloads kept (as quant.ts's table). */
function f16ToF32(s: Scratch): Code {
  const h = s.get(), a = s.get(), e = s.get(), o = s.get();
  return [
    ...set(h),
    ...get(h), ...splat(0x7fff), ...V.and, ...i32c(13), ...V.shl, ...set(a),
    ...get(a), ...splat(0x0f800000), ...V.and, ...set(e),
    ...get(a), ...splat(112 << 23), ...V.add, ...set(o),
    // infinity / NaN: exponent all ones
    ...get(o), ...get(e), ...splat(0x0f800000), ...V.eq, ...splat(112 << 23), ...V.and, ...V.add, ...set(o),
    // zero / subnormal: renormalised through an exact float subtraction
    ...get(o), ...splat(1 << 23), ...V.add, ...splat(113 << 23), ...V.fsub,
    ...get(o),
    ...get(e), ...splat(0), ...V.eq,
    ...V.bitselect,
    ...get(h), ...splat(0x8000), ...V.and, ...i32c(16), ...V.shl, ...V.or,
  ];
}

/** ggml's fp32 -> bf16: round to nearest even, a NaN made quiet (sign kept). */
function f32ToBf16(s: Scratch): Code {
  const b = s.get();
  return [
    ...set(b),
    ...get(b), ...i32c(16), ...V.shrU, ...splat(0x40), ...V.or,
    ...get(b), ...splat(0x7fff), ...V.add, ...get(b), ...i32c(16), ...V.shrU, ...splat(1), ...V.and, ...V.add, ...i32c(16), ...V.shrU,
    ...get(b), ...splat(0x7fffffff), ...V.and, ...splat(0x7f800000), ...V.gtS,
    ...V.bitselect,
  ];
}

/**
 * numpy's npy_floatbits_to_halfbits: round to nearest even, overflow to infinity, subnormals kept, a NaN's
 * top payload bits kept as they are (0x7c01 where none are left), not made quiet.
 */
function f32ToF16Numpy(s: Scratch): Code {
  const b = s.get(), a = s.get(), r = s.get(), m = s.get();
  return [
    ...set(b),
    ...get(b), ...splat(0x7fffffff), ...V.and, ...set(a),
    // normal: rebase the exponent, round the 13 dropped bits to nearest even (a carry may reach infinity)
    ...get(a), ...splat(-(112 << 23) + 0xfff), ...V.add, ...get(a), ...i32c(13), ...V.shrU, ...splat(1), ...V.and, ...V.add, ...i32c(13), ...V.shrU,
    // below half's normal range: adding 0.5 leaves the half subnormal's bits at the bottom, rounded by the FPU
    ...get(a), ...splat(126 << 23), ...V.fadd, ...splat(126 << 23), ...V.sub,
    ...get(a), ...splat(113 << 23), ...V.geS,
    ...V.bitselect, ...set(r),
    // from 65536 up (infinity included): infinity
    ...splat(0x7c00), ...get(r), ...get(a), ...splat(143 << 23), ...V.geS, ...V.bitselect, ...set(r),
    // NaN: 0x7c00 | payload >> 13, or 0x7c01 when that is 0
    ...get(a), ...i32c(13), ...V.shrU, ...splat(0x3ff), ...V.and, ...set(m),
    ...get(m), ...splat(0x7c00), ...V.or, ...get(m), ...splat(0), ...V.eq, ...splat(1), ...V.and, ...V.or,
    ...get(r),
    ...get(a), ...splat(0x7f800000), ...V.gtS,
    ...V.bitselect,
    ...get(b), ...i32c(16), ...V.shrU, ...splat(0x8000), ...V.and, ...V.or,
  ];
}

function fromF32Bits(to: Exclude<DstType, 'Q8_0'>, s: Scratch): Code {
  return to === 'F32' ? [] : to === 'BF16' ? f32ToBf16(s) : f32ToF16Numpy(s);
}

/** A loop of n values, `lanes` a round; `ptrs` are i32 locals advanced by their bytes per round. */
function loop(ptrs: [number, number][], body: Code, lanes: number): Code {
  const adv = ptrs.flatMap(([p, step]) => [...get(p), ...i32c(step), 0x6a, ...set(p)]);
  return [
    0x02, 0x40, 0x03, 0x40,
    ...get(0), ...i32c(0), 0x4c, 0x0d, 1, // n <= 0: done
    ...body,
    ...adv,
    ...get(0), ...i32c(lanes), 0x6b, ...set(0),
    0x0c, 0, 0x0b, 0x0b,
  ];
}

interface Fn {
  name: string;
  vLocals: number;
  code: Code;
}

/** cast_<from>_<to>(n, src, dst): eight values a round (may run up to seven past n). */
function castFn(from: SrcDtype, to: Exclude<DstType, 'Q8_0'>): Fn {
  const s = new Scratch(3);
  const half = (h: number): Code => [...get(1), ...loadBits(from, s, h * 4), ...fromF32Bits(to, s)];
  const body = to === 'F32'
    ? [...get(2), ...half(0), ...V.storeAt(0), ...get(2), ...half(1), ...V.storeAt(16)]
    : [...get(2), ...half(0), ...half(1), ...V.narrowU16, ...V.storeAt(0)];
  return { name: `cast_${from}_${to}`, vLocals: s.count, code: loop([[1, 8 * SIZE[from]], [2, 8 * (to === 'F32' ? 4 : 2)]], body, 8) };
}

/**
 * q8_<from>(n, src, dst): n values (a multiple of 32) into n / 32 Q8_0 blocks, a block a round: the scale
 * d = max|x| / 127 (NaN if any x is), id = 1 / d, q = round half away from zero of x · id. Where d or id is
 * not finite (a NaN or infinity in the block, d 0 or so small that 1 / d overflows) every product is 0, NaN
 * or infinite, which numpy's cast to int8 makes 0: the block's quants are all 0.
 */
function q8Fn(from: SrcDtype): Fn {
  const s = new Scratch(3);
  const x = Array.from({ length: 8 }, () => s.get());
  const m = s.get(), d = s.get(), id = s.get(), ok = s.get(), v = s.get(), a = s.get(), fl = s.get(), lo = s.get();
  const q = Array.from({ length: 8 }, () => s.get());
  const abs = (k: number): Code => [...get(x[k]!), ...splat(0x7fffffff), ...V.and];
  const quant = (k: number): Code => [
    ...get(x[k]!), ...get(id), ...V.fmul, ...set(v),
    ...get(v), ...V.fabs, ...set(a),
    ...get(a), ...V.ffloor, ...set(fl),
    // floor(a) + floor(2 (a - floor(a))) = floor(a) + (a - floor(a) >= 0.5), all exact in float32; the
    // integer from the float's bits (fl + 2^23 is exact for fl < 2^23)
    ...get(fl), ...fsplat(8388608), ...V.fadd, ...splat(0x4b000000), ...V.sub,
    ...get(a), ...get(fl), ...V.fsub, ...fsplat(0.5), ...V.fge, ...V.sub,
    // the sign as two's complement: (t ^ s) - s, s = -1 where v is negative (-0 rounds to 0 either way)
    ...get(v), ...i32c(31), ...V.shrS, ...V.xor, ...get(v), ...i32c(31), ...V.shrS, ...V.sub,
    ...set(q[k]!),
  ];
  const body: Code = [
    ...x.flatMap((r, k) => [...get(1), ...loadBits(from, s, 4 * k), ...set(r)]),
    // max |x| over the block as integers (|x|'s bits order as its values; a NaN's lie above infinity's), into
    // every lane
    ...abs(0), ...abs(1), ...V.maxS, ...abs(2), ...abs(3), ...V.maxS, ...V.maxS,
    ...abs(4), ...abs(5), ...V.maxS, ...abs(6), ...abs(7), ...V.maxS, ...V.maxS, ...V.maxS, ...set(m),
    ...get(m), ...get(m), ...get(m), ...V.shuffle([8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7]), ...V.maxS, ...set(m),
    ...get(m), ...get(m), ...get(m), ...V.shuffle([4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11]), ...V.maxS, ...set(m),
    ...get(m), ...fsplat(127), ...V.fdiv, ...set(d),
    ...fsplat(1), ...get(d), ...V.fdiv, ...set(id),
    ...get(id), ...fsplat(Infinity), ...V.flt, ...get(d), ...fsplat(Infinity), ...V.flt, ...V.and, ...set(ok),
    // the scale as float16; a NaN scale is numpy's quiet NaN
    ...get(2), ...splat(0x7e00), ...get(d), ...f32ToF16Numpy(s), ...get(d), ...get(d), ...V.fne, ...V.bitselect, ...V.store16At(0),
    ...x.flatMap((_, k) => quant(k)),
    ...get(q[0]!), ...get(q[1]!), ...V.narrowS16, ...get(q[2]!), ...get(q[3]!), ...V.narrowS16, ...V.narrowS8, ...set(lo),
    ...get(2), ...get(lo), ...get(ok), ...V.and, ...V.storeAt(2),
    ...get(2), ...get(q[4]!), ...get(q[5]!), ...V.narrowS16, ...get(q[6]!), ...get(q[7]!), ...V.narrowS16, ...V.narrowS8, ...get(ok), ...V.and, ...V.storeAt(18),
  ];
  return { name: `q8_${from}`, vLocals: s.count, code: loop([[1, Q8_0_BLOCK * SIZE[from]], [2, Q8_0_BYTES]], body, Q8_0_BLOCK) };
}

const SRCS: SrcDtype[] = ['F32', 'BF16', 'F16'];
const kernelName = (from: SrcDtype, to: DstType) => (to === 'Q8_0' ? `q8_${from}` : `cast_${from}_${to}`);

function moduleBytes(): Uint8Array {
  const fns: Fn[] = [];
  for (const f of SRCS) {
    fns.push(q8Fn(f));
    for (const t of ['F16', 'BF16', 'F32'] as const) if (f !== t || t === 'BF16') fns.push(castFn(f, t));
  }
  const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];
  const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
  const name = (s: string) => [...uleb(s.length), ...Buffer.from(s)];
  const bodies = fns.map((f) => {
    const b = [...vec([[...uleb(f.vLocals), 0x7b]]), ...f.code, 0x0b];
    return [...uleb(b.length), ...b];
  });
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    // type 0: (i32 n, i32 src, i32 dst)
    ...section(1, vec([[0x60, 3, 0x7f, 0x7f, 0x7f, 0]])),
    ...section(2, vec([[...name('env'), ...name('memory'), 0x02, 0x00, 0x00]])),
    ...section(3, vec(fns.map(() => [0]))),
    ...section(7, vec(fns.map((f, i) => [...name(f.name), 0x00, ...uleb(i)]))),
    ...section(10, vec(bodies)),
  ]);
}

const PAGE = 65536;
/** Slack past each region: a cast round may run up to seven values past n. */
const SLACK = 64;

/**
 * The kernels bound to a memory of their own with three regions of `cap` float32 values each: a source
 * (raw bytes of the source dtype), a second one (the q/k permutation's target, or a cast's scratch), and
 * the output.
 */
export class QuantKernels {
  readonly mem: Uint8Array;
  readonly A = 0;
  readonly B: number;
  readonly OUT: number;
  private constructor(
    private readonly memory: WasmMemory,
    private readonly ex: Record<string, (n: number, src: number, dst: number) => void>,
    readonly cap: number,
  ) {
    this.B = cap * 4 + SLACK;
    this.OUT = 2 * (cap * 4 + SLACK);
    this.mem = new Uint8Array(memory.buffer);
  }

  /** Kernels for `cap` values a call, or null where WebAssembly SIMD is unavailable or turned off. */
  static create(cap: number): QuantKernels | null {
    if (!enabled || compiled === null) return null;
    const wa = wasmApi();
    try {
      compiled ??= new wa.Module(moduleBytes());
    } catch (e) {
      if (process.env.MOE_FORGE_DEBUG_WASM) console.error(e);
      compiled = null;
      return null;
    }
    try {
      const memory = new wa.Memory({ initial: Math.ceil((3 * (cap * 4 + SLACK)) / PAGE) });
      const ex = new wa.Instance(compiled, { env: { memory } }).exports as Record<string, (n: number, src: number, dst: number) => void>;
      return new QuantKernels(memory, ex, cap);
    } catch (e) {
      if (process.env.MOE_FORGE_DEBUG_WASM) console.error(e);
      return null;
    }
  }

  /** n values of `from` at byte address src, encoded as `to` at dst (n a multiple of 32 for Q8_0). */
  run(from: SrcDtype, to: DstType, n: number, src: number, dst: number): void {
    if (n <= 0) return;
    // The identity but for BF16's NaNs (made quiet): bytes as they are.
    if (from === to && to !== 'BF16') this.mem.copyWithin(dst, src, src + n * SIZE[from]);
    else this.ex[kernelName(from, to)]!(n, src, dst);
  }

  /** float32 values at byte address `at` (4-aligned). */
  f32(at: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, at, n);
  }
}

let compiled: object | null | undefined;
let enabled = true;

/** Turns the kernels off or on (tests compare them with the scalar JavaScript path). */
export function useQuantWasm(on: boolean): void {
  enabled = on;
}

export const isSrcDtype = (d: string): d is SrcDtype => d === 'F32' || d === 'BF16' || d === 'F16';
