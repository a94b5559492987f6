/**
 * GGUF encodings as WebAssembly SIMD kernels, built with the assembler of libs/wasm as libs/safetensors/float-wasm.ts
 * builds its casts (no toolchain, no binary in the repository): source values (F32, BF16, F16) decoded and
 * encoded in one pass into Q8_0 blocks, F16, BF16 or F32. Every byte is the one quant.ts's scalar kernels
 * give (gguf-py's numpy arithmetic): Q8_0's scale amax / 127 and its inverse in float32, the products
 * rounded to float32, numpy's round half away from zero (floor(a) + floor(2 (a - floor(a)))), NaN and
 * infinite products as 0, a NaN block's scale the float16 NaN 0x7e00; F16 as numpy's cast (NaN payloads
 * kept, not made quiet); BF16 as ggml's (NaN made quiet). test/gguf/quant-wasm.test.ts compares them.
 */
import { f32ToBf16, f32ToF16, fsplat, funcType, get, I32, i32c, loadBits, loop as wasmLoop, set, splat, V, V128, wasmApi, wasmModule, Scratch, type Code, type WasmFunction, type WasmMemory } from '../wasm';
import { Q8_0_BLOCK, Q8_0_BYTES } from './quant';

export type SrcDtype = 'F32' | 'BF16' | 'F16';
export type DstType = 'Q8_0' | 'F16' | 'BF16' | 'F32';

const SIZE: Record<SrcDtype, number> = { F32: 4, BF16: 2, F16: 2 };

/**
 * numpy's npy_floatbits_to_halfbits: round to nearest even, overflow to infinity, subnormals kept, a NaN's
 * top payload bits kept as they are (0x7c01 where none are left), not made quiet.
 */
function f32ToF16Numpy(s: Scratch): Code {
  // NaN: 0x7c00 | payload >> 13, or 0x7c01 when that is 0
  return f32ToF16(s, (a) => {
    const m = s.get();
    return [
      ...get(a), ...i32c(13), ...V.shrU, ...splat(0x3ff), ...V.and, ...set(m),
      ...get(m), ...splat(0x7c00), ...V.or, ...get(m), ...splat(0), ...V.eq, ...splat(1), ...V.and, ...V.or,
    ];
  });
}

function fromF32Bits(to: Exclude<DstType, 'Q8_0'>, s: Scratch): Code {
  return to === 'F32' ? [] : to === 'BF16' ? f32ToBf16(s) : f32ToF16Numpy(s);
}

/** A loop of n (local 0) values, `lanes` a round; `ptrs` are i32 locals advanced by their bytes per round. */
const loop = (ptrs: [number, number][], body: Code, lanes: number): Code => wasmLoop(0, ptrs, body, lanes);

/** cast_<from>_<to>(n, src, dst): eight values a round (may run up to seven past n). */
function castFn(from: SrcDtype, to: Exclude<DstType, 'Q8_0'>): WasmFunction {
  const s = new Scratch(3);
  const half = (h: number): Code => [...get(1), ...loadBits(from, s, h * 4), ...fromF32Bits(to, s)];
  const body = to === 'F32'
    ? [...get(2), ...half(0), ...V.storeAt(0), ...get(2), ...half(1), ...V.storeAt(16)]
    : [...get(2), ...half(0), ...half(1), ...V.narrowU16, ...V.storeAt(0)];
  return { name: `cast_${from}_${to}`, type: 0, locals: [[s.count, V128]], code: loop([[1, 8 * SIZE[from]], [2, 8 * (to === 'F32' ? 4 : 2)]], body, 8) };
}

/**
 * q8_<from>(n, src, dst): n values (a multiple of 32) into n / 32 Q8_0 blocks, a block a round: the scale
 * d = max|x| / 127 (NaN if any x is), id = 1 / d, q = round half away from zero of x · id. Where d or id is
 * not finite (a NaN or infinity in the block, d 0 or so small that 1 / d overflows) every product is 0, NaN
 * or infinite, which numpy's cast to int8 makes 0: the block's quants are all 0.
 */
function q8Fn(from: SrcDtype): WasmFunction {
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
  return { name: `q8_${from}`, type: 0, locals: [[s.count, V128]], code: loop([[1, Q8_0_BLOCK * SIZE[from]], [2, Q8_0_BYTES]], body, Q8_0_BLOCK) };
}

const SRCS: SrcDtype[] = ['F32', 'BF16', 'F16'];
const kernelName = (from: SrcDtype, to: DstType) => (to === 'Q8_0' ? `q8_${from}` : `cast_${from}_${to}`);

function moduleBytes(): Uint8Array {
  const fns: WasmFunction[] = [];
  for (const f of SRCS) {
    fns.push(q8Fn(f));
    for (const t of ['F16', 'BF16', 'F32'] as const) if (f !== t || t === 'BF16') fns.push(castFn(f, t));
  }
  // type 0: (i32 n, i32 src, i32 dst); a memory of its own, of any size
  return wasmModule([funcType([I32, I32, I32])], fns, 0);
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

/** Whether the kernels are on (kernels kept for reuse must not run while they are off). */
export const quantWasmEnabled = (): boolean => enabled;

export const isSrcDtype = (d: string): d is SrcDtype => d === 'F32' || d === 'BF16' || d === 'F16';
