import { SafetensorsError } from '../errors';
import type { ChunkPool } from './chunk-pool';
import { castThrough, floatKernels, FLOAT_CAP } from './float-wasm';
import { DTYPE_SIZES, FLOAT_DTYPES, isFloatDtype, OUTPUT_DTYPE_NAMES, OUTPUT_DTYPES, type FloatDtype } from './dtype-table';
import { orList } from '../util';

export * from './dtype-table';

export function dtypeSize(dtype: string): number {
  const s = DTYPE_SIZES[dtype];
  if (s === undefined) throw new SafetensorsError('unknown_dtype', `unknown dtype "${dtype}" (known: ${Object.keys(DTYPE_SIZES).join(', ')})`);
  return s;
}

/** Recipe/config dtype names (torch style, with or without `torch.`) to safetensors names: output dtypes only. */
export function dtypeFromName(name: string): FloatDtype {
  const n = name.replace(/^torch\./, '');
  const d = OUTPUT_DTYPES.find((x) => FLOAT_DTYPES[x].torch === n || (FLOAT_DTYPES[x].aliases as readonly string[]).includes(n));
  if (d === undefined) throw new SafetensorsError('unknown_dtype', `unknown dtype "${name}": expected ${orList(OUTPUT_DTYPE_NAMES)}`);
  return d;
}

/**
 * Whether a cast from `from` to `to` can turn real weights into inf: to float16 (max 65504) from a wider
 * exponent, or from float64. float32 to bfloat16 shares the exponent (only |x| > 3.39e38 would overflow).
 */
export function narrowsRange(from: string, to: string): boolean {
  return from !== to && (to === 'F16' || from === 'F64');
}

/** The index of the first inf or NaN among a buffer's values (an all-ones exponent), or -1. */
export function firstNonFinite(buf: Uint8Array, dtype: FloatDtype): number {
  const size = dtype === 'F32' ? 4 : 2;
  const k = buf.byteLength >= 4096 ? floatKernels() : null;
  if (k) {
    // Whole chunks through the SIMD kernel (~10x this function's loop); a chunk that has one is looked at here.
    const n = Math.floor(buf.byteLength / size);
    for (let off = 0; off < n; off += FLOAT_CAP) {
      const m = Math.min(FLOAT_CAP, n - off);
      const chunk = buf.subarray(off * size, (off + m) * size);
      k.src.set(chunk);
      const at = k.anyNonFinite(dtype, m) ? firstNonFiniteHere(chunk, dtype) : -1;
      if (at >= 0) return off + at;
    }
    return -1;
  }
  return firstNonFiniteHere(buf, dtype);
}

/**
 * firstNonFinite without the kernels. Two 16-bit values are checked per 32-bit word (a zero half of
 * `(w & M) ^ M` is an all-ones field; the halves stay below 0x8000).
 */
function firstNonFiniteHere(buf: Uint8Array, dtype: FloatDtype): number {
  const size = dtype === 'F32' ? 4 : 2;
  const n = Math.floor(buf.byteLength / size);
  const aligned = buf.byteOffset % 4 === 0;
  const words = aligned ? Math.floor(buf.byteLength / 4) : 0;
  const w32 = aligned ? new Uint32Array(buf.buffer, buf.byteOffset, words) : new Uint32Array(0);
  if (dtype === 'F32') {
    for (let i = 0; i < words; i++) if ((w32[i]! & 0x7f800000) === 0x7f800000) return i;
  } else {
    const m = dtype === 'F16' ? 0x7c007c00 : 0x7f807f80;
    let i = 0;
    for (; i < words; i++) {
      const v = (w32[i]! & m) ^ m;
      if (((v - 0x00010001) & 0x80008000) !== 0) break;
    }
    // The word that hit (or the unaligned rest) is looked at value by value.
    const from = i * 2;
    const h = m & 0xffff;
    for (let j = from; j < n; j++) if (((buf[j * 2]! | (buf[j * 2 + 1]! << 8)) & h) === h) return j;
    return -1;
  }
  for (let j = words; j < n; j++) {
    const o = j * 4;
    if (((buf[o]! | (buf[o + 1]! << 8) | (buf[o + 2]! << 16) | (buf[o + 3]! << 24)) & 0x7f800000) === 0x7f800000) return j;
  }
  return -1;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN. */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  return f32BitsToBf16(u32[0]!);
}

export function bf16BitsToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0]!;
}

/** float32 -> IEEE half bits, round to nearest even, overflow to infinity, subnormals kept. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  return f32BitsToF16(u32[0]!);
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** F32 bytes as float32 values: a view of them where the host is little-endian and they lie 4-byte aligned (no copy), else a decoded copy. */
export function f32Values(buf: Uint8Array): Float32Array {
  if (LITTLE_ENDIAN && buf.byteOffset % 4 === 0 && buf.byteLength % 4 === 0) return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
  return decodeFloats(buf, 'F32');
}

/** Decode little-endian float bytes of `dtype` into float32 values. */
export function decodeFloats(buf: Uint8Array, dtype: FloatDtype | string): Float32Array {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dtype === 'F32') {
    const out = new Float32Array(buf.byteLength / 4);
    // The stored bytes are the values on a little-endian host: one copy (bits and all), not a loop.
    if (LITTLE_ENDIAN) {
      new Uint8Array(out.buffer).set(buf.subarray(0, out.length * 4));
      return out;
    }
    for (let i = 0; i < out.length; i++) out[i] = dv.getFloat32(i * 4, true);
    return out;
  }
  if (dtype === 'F16' || dtype === 'BF16') {
    const out = new Float32Array(buf.byteLength / 2);
    const conv = dtype === 'F16' ? f16BitsToF32 : bf16BitsToF32;
    for (let i = 0; i < out.length; i++) out[i] = conv(dv.getUint16(i * 2, true));
    return out;
  }
  if (dtype === 'F64') {
    const out = new Float32Array(buf.byteLength / 8);
    for (let i = 0; i < out.length; i++) out[i] = dv.getFloat64(i * 8, true);
    return out;
  }
  throw new SafetensorsError('unsupported_dtype', `cannot read ${dtype} as floating point`);
}

/** Encode float values (already float32-representable or not) as `dtype` little-endian bytes. */
export function encodeFloats(values: ArrayLike<number>, dtype: FloatDtype): Buffer {
  const n = values.length;
  if (dtype === 'F32') {
    const out = Buffer.allocUnsafe(n * 4);
    for (let i = 0; i < n; i++) out.writeFloatLE(values[i]!, i * 4);
    return out;
  }
  const out = Buffer.allocUnsafe(n * 2);
  const conv = dtype === 'F16' ? f32ToF16Bits : f32ToBf16Bits;
  for (let i = 0; i < n; i++) out.writeUInt16LE(conv(values[i]!), i * 2);
  return out;
}

/** float32 bits -> IEEE half bits with integer ops only (round to nearest even). */
function f32BitsToF16(b: number): number {
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 112;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let r = mant >>> shift;
    if (rest > half || (rest === half && (r & 1))) r++;
    return sign | r;
  }
  let r = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (r & 1))) r++;
  return sign | r;
}

let f16ToF32Table: Uint32Array | null = null;
/** float32 bits of every half value (256 KiB, built once). */
function f16Table(): Uint32Array {
  if (!f16ToF32Table) {
    const t = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) t[h] = f16BitsToF32(h);
    f16ToF32Table = new Uint32Array(t.buffer);
  }
  return f16ToF32Table;
}

/** Typed-array views need aligned offsets; copy the rare unaligned chunk. */
function aligned(buf: Buffer, size: number): Buffer {
  return buf.byteOffset % size === 0 ? buf : Buffer.from(buf);
}

function u16View(buf: Buffer): Uint16Array {
  const b = aligned(buf, 2);
  return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
}

function u32View(buf: Buffer): Uint32Array {
  const b = aligned(buf, 4);
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

const tables = new Map<string, Uint16Array>();
/** Every 16-bit value's conversion (128 KiB, built once per pair): the cast becomes one lookup per element. */
function table16(from: 'BF16' | 'F16', to: 'BF16' | 'F16'): Uint16Array {
  const key = `${from}>${to}`;
  let t = tables.get(key);
  if (!t) {
    t = new Uint16Array(65536);
    const f16 = f16Table();
    for (let h = 0; h < 65536; h++) t[h] = from === 'BF16' ? f32BitsToF16(h << 16) : f32BitsToBf16(f16[h]!);
    tables.set(key, t);
  }
  return t;
}

/**
 * Convert raw little-endian bytes between float dtypes (the bulk of a merge's casts): with the WebAssembly
 * SIMD kernels of float-wasm.ts where there are, else with integer operations on typed arrays (16-bit to
 * 16-bit by table lookup, the rest in tight loops without calls). Round to nearest even; NaN and infinities
 * kept (a NaN's payload may differ between the two paths). A new buffer unless from === to: from `pool` if given.
 */
export function convertBytes(buf: Buffer, from: string, to: FloatDtype, pool?: ChunkPool): Buffer {
  if (from === to) return buf;
  const n = buf.length / dtypeSize(from);
  if (!isFloatDtype(from)) return encodeFloats(decodeFloats(buf, from), to);
  const out = pool ? pool.take(n * dtypeSize(to)) : Buffer.allocUnsafeSlow(n * dtypeSize(to));
  const k = floatKernels();
  if (k) {
    castThrough(k, buf, from, to, out);
    return out;
  }
  if (from === 'F32' && to === 'BF16') {
    f32ToBf16Loop(u32View(buf), u16View(out), n);
    return out;
  }
  if (from === 'F32' && to === 'F16') {
    const src = u32View(buf);
    const dst = u16View(out);
    for (let i = 0; i < n; i++) dst[i] = f32BitsToF16(src[i]!);
    return out;
  }
  if ((from === 'BF16' || from === 'F16') && to === 'F32') {
    const src = u16View(buf);
    const dst = u32View(out);
    if (from === 'BF16') for (let i = 0; i < n; i++) dst[i] = src[i]! << 16;
    else lookupLoop(src, dst, f16Table(), n);
    return out;
  }
  // What is left: bfloat16 <-> float16.
  lookupLoop(u16View(buf), u16View(out), table16(from as 'BF16' | 'F16', to as 'BF16' | 'F16'), n);
  return out;
}

function lookupLoop(src: Uint16Array, dst: Uint16Array | Uint32Array, table: Uint16Array | Uint32Array, n: number): void {
  for (let i = 0; i < n; i++) dst[i] = table[src[i]!]!;
}

function f32ToBf16Loop(src: Uint32Array, dst: Uint16Array, n: number): void {
  for (let i = 0; i < n; i++) {
    const b = src[i]!;
    // NaN keeps its sign and becomes quiet; everything else rounds to nearest even (inf stays inf).
    dst[i] = (b & 0x7fffffff) > 0x7f800000 ? ((b >>> 16) | 0x40) & 0xffff : ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
  }
}

function f32BitsToBf16(b: number): number {
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) | 0x40) & 0xffff;
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}
