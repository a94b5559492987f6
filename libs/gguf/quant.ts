/**
 * Element kernels for GGUF tensor data, bit for bit as llama.cpp's converter (numpy) computes them from
 * float32 values: F16 as numpy's float32 -> float16 cast, BF16 as ggml's fp32 -> bf16 (NaN made quiet,
 * round to nearest even), Q8_0 as ggml's reference quantiser (scale amax/127 in float32, round half away
 * from zero, the scale stored as float16).
 */
import type { GgufTensorType } from './format';

export const Q8_0_BLOCK = 32;
export const Q8_0_BYTES = 34;

/** numpy's npy_floatbits_to_halfbits: round to nearest even, subnormals kept, NaN payload truncated but kept NaN. */
export function f32BitsToF16Numpy(f: number): number {
  const sgn = (f >>> 16) & 0x8000;
  const exp = f & 0x7f800000;
  let sig = f & 0x007fffff;
  if (exp >= 0x47800000) {
    if (exp === 0x7f800000 && sig !== 0) {
      let r = 0x7c00 + (sig >>> 13);
      if (r === 0x7c00) r++;
      return sgn | r;
    }
    return sgn | 0x7c00;
  }
  if (exp <= 0x38000000) {
    if (exp < 0x33000000) return sgn;
    const e = exp >>> 23;
    sig = (0x00800000 + sig) >>> (113 - e);
    // Ties to even; bits shifted out above are checked in the original.
    if ((sig & 0x3fff) !== 0x1000 || (f & 0x7ff) !== 0) sig += 0x1000;
    return sgn | (sig >>> 13);
  }
  const hexp = (exp - 0x38000000) >>> 13;
  if ((sig & 0x3fff) !== 0x1000) sig += 0x1000;
  // A carry out of the significand increments the exponent (to infinity at the top), as intended.
  return (sgn | ((sig >>> 13) + hexp)) & 0xffff;
}

/** ggml_compute_fp32_to_bf16 (as gguf-py's BF16 quantiser). */
export function f32BitsToBf16Ggml(n: number): number {
  if ((n & 0x7fffffff) >>> 0 > 0x7f800000) return ((n >>> 16) | 64) & 0xffff;
  return Math.floor((n + 0x7fff + ((n >>> 16) & 1)) / 65536) & 0xffff;
}

let halfToF32: Float32Array | null = null;
function halfTable(): Float32Array {
  if (!halfToF32) {
    halfToF32 = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const s = h & 0x8000 ? -1 : 1;
      const e = (h >>> 10) & 0x1f;
      const m = h & 0x3ff;
      halfToF32[h] = e === 0 ? s * m * 2 ** -24 : e === 0x1f ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
    }
    // NaN payloads: keep the half's bits widened as numpy does (sign, all-ones exponent, payload << 13).
    const bits = new Uint32Array(halfToF32.buffer);
    for (let h = 0; h < 65536; h++) if ((h & 0x7c00) === 0x7c00 && h & 0x3ff) bits[h] = ((h & 0x8000) << 16) | 0x7f800000 | ((h & 0x3ff) << 13);
  }
  return halfToF32;
}

/** A chunk of little-endian source bytes (F32, F16, BF16 or F64) as float32 values, appended into `out` at `at`. */
export function decodeInto(src: Buffer, dtype: string, out: Float32Array, at: number): number {
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  if (dtype === 'F32') {
    const n = src.length >>> 2;
    if (src.byteOffset % 4 === 0) out.set(new Float32Array(src.buffer, src.byteOffset, n), at);
    else for (let i = 0; i < n; i++) out[at + i] = dv.getFloat32(i * 4, true);
    return n;
  }
  if (dtype === 'BF16' || dtype === 'F16') {
    const n = src.length >>> 1;
    const s16 = src.byteOffset % 2 === 0 ? new Uint16Array(src.buffer, src.byteOffset, n) : null;
    const bits = new Int32Array(out.buffer, out.byteOffset + at * 4, n);
    if (dtype === 'BF16') {
      if (s16) for (let i = 0; i < n; i++) bits[i] = s16[i]! << 16;
      else for (let i = 0; i < n; i++) bits[i] = dv.getUint16(i * 2, true) << 16;
      return n;
    }
    const t = new Int32Array(halfTable().buffer);
    if (s16) for (let i = 0; i < n; i++) bits[i] = t[s16[i]!]!;
    else for (let i = 0; i < n; i++) bits[i] = t[dv.getUint16(i * 2, true)]!;
    return n;
  }
  if (dtype === 'F64') {
    const n = src.length >>> 3;
    for (let i = 0; i < n; i++) out[at + i] = dv.getFloat64(i * 8, true); // Float32Array stores round to nearest even
    return n;
  }
  throw new Error(`internal: no GGUF decode for ${dtype}`);
}

export function elementBytes(type: GgufTensorType, n: number): number {
  return type === 'F32' ? n * 4 : type === 'Q8_0' ? (n / Q8_0_BLOCK) * Q8_0_BYTES : n * 2;
}

/** Encodes float32 values (n a multiple of 32 for Q8_0) into `out` (elementBytes long). */
export function encode(values: Float32Array, type: GgufTensorType, out: Buffer): void {
  const n = values.length;
  if (type === 'F32') {
    Buffer.from(values.buffer, values.byteOffset, n * 4).copy(out);
    return;
  }
  if (type === 'F16' || type === 'BF16') {
    const bits = new Int32Array(values.buffer, values.byteOffset, n);
    // Little-endian machines only (as the rest of the project): a 16-bit view when the buffer allows one.
    const o16 = out.byteOffset % 2 === 0 ? new Uint16Array(out.buffer, out.byteOffset, n) : null;
    if (type === 'BF16') {
      for (let i = 0; i < n; i++) {
        const b = bits[i]!;
        // ggml's rounding; a NaN is made quiet. No carry past 32 bits for any non-NaN value.
        const h = (b & 0x7fffffff) > 0x7f800000 ? ((b >>> 16) | 64) & 0xffff : ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
        if (o16) o16[i] = h;
        else out.writeUInt16LE(h, i * 2);
      }
      return;
    }
    for (let i = 0; i < n; i++) {
      const h = f32BitsToF16Numpy(bits[i]! >>> 0);
      if (o16) o16[i] = h;
      else out.writeUInt16LE(h, i * 2);
    }
    return;
  }
  quantizeQ8_0(values, out);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

const scaled = new Float32Array(32);

/** ggml's quantize_row_q8_0_ref over whole blocks. */
export function quantizeQ8_0(values: Float32Array, out: Buffer): void {
  const blocks = values.length / Q8_0_BLOCK;
  const q = new Int8Array(out.buffer, out.byteOffset, out.length);
  for (let b = 0; b < blocks; b++) {
    const base = b * Q8_0_BLOCK;
    let amax = 0;
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const a = Math.abs(values[base + j]!);
      // numpy's max propagates NaN
      if (a > amax || a !== a) amax = a;
    }
    const d = Math.fround(amax / 127);
    const id = d === 0 ? 0 : Math.fround(1 / d);
    f32Scratch[0] = d;
    // A NaN block's scale: numpy's NaN bits here depend on where its SIMD max met the NaN (its payload kept
    // or not); the plain quiet NaN, as the WebAssembly kernel writes it. The quants are 0 either way.
    const h = d !== d ? 0x7e00 : f32BitsToF16Numpy(u32Scratch[0]!);
    const o = b * Q8_0_BYTES;
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
    // The products rounded to float32 (a Float32Array store), as numpy computes blocks * id.
    for (let j = 0; j < Q8_0_BLOCK; j++) scaled[j] = values[base + j]! * id;
    for (let j = 0; j < Q8_0_BLOCK; j++) {
      const v = scaled[j]!;
      // floor(a) + floor(2 * (a - floor(a))) is round half away from zero, exact in doubles for float32 a.
      // numpy's float -> int8 cast of NaN is platform-defined; 0 here.
      q[o + 2 + j] = v >= 0 ? Math.floor(v + 0.5) : v < 0 ? -Math.floor(0.5 - v) : 0;
    }
  }
}
