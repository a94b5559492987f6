import { get, i32c, set, splat, V, type Code, type Scratch } from './assembler';

/** The float dtypes the kernels read. */
export type FloatBitsDtype = 'F32' | 'BF16' | 'F16';

/** float32 bits of four values of `dt` loaded from the address on the stack (+ `at` values). */
export function loadBits(dt: FloatBitsDtype, s: Scratch, at = 0): Code {
  if (dt === 'F32') return V.loadAt(at * 4);
  if (dt === 'BF16') return [...V.load16x4uAt(at * 2), ...i32c(16), ...V.shl];
  return [...V.load16x4uAt(at * 2), ...f16ToF32(s)];
}

/** half bits (i32 lanes) -> float32 bits, exact, NaN payloads kept. */
export function f16ToF32(s: Scratch): Code {
  const h = s.get(), a = s.get(), e = s.get(), o = s.get();
  return [
    ...set(h),
    // magnitude moved to float32's place, exponent rebased by 127 - 15
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

/** float32 bits -> bfloat16 bits (i32 lanes), round to nearest even; a NaN keeps its sign and becomes quiet (ggml's too). */
export function f32ToBf16(s: Scratch): Code {
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
 * float32 bits -> half bits (i32 lanes): round to nearest even, overflow to infinity, subnormals kept. A NaN
 * becomes what `nanBits` leaves on the stack from the magnitude bits in local `a` (its users differ there).
 */
export function f32ToF16(s: Scratch, nanBits: (a: number) => Code): Code {
  const b = s.get(), a = s.get(), r = s.get();
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
    ...nanBits(a),
    ...get(r),
    ...get(a), ...splat(0x7f800000), ...V.gtS,
    ...V.bitselect,
    ...get(b), ...i32c(16), ...V.shrU, ...splat(0x8000), ...V.and, ...V.or,
  ];
}
