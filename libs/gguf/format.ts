// The GGUF container's fixed facts (version 3, little-endian), as llama.cpp's gguf-py defines them.
import type { GgufScalarType } from './types';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const DEFAULT_ALIGNMENT = 32;

/** Metadata value type codes. */
export const VALUE_CODES: Record<GgufScalarType | 'array', number> = {
  u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12,
};
export const VALUE_NAMES = new Map<number, GgufScalarType | 'array'>(Object.entries(VALUE_CODES).map(([k, v]) => [v, k as GgufScalarType | 'array']));
export const SCALAR_SIZES: Partial<Record<GgufScalarType, number>> = { u8: 1, i8: 1, bool: 1, u16: 2, i16: 2, u32: 4, i32: 4, f32: 4, u64: 8, i64: 8, f64: 8 };

/** Tensor types we write, plus the others a reader may meet (names as ggml spells them). */
export type GgufTensorType = 'F32' | 'F16' | 'BF16' | 'Q8_0';
export const TENSOR_TYPES: Record<string, { code: number; block: number; bytes: number }> = {
  F32: { code: 0, block: 1, bytes: 4 },
  F16: { code: 1, block: 1, bytes: 2 },
  Q4_0: { code: 2, block: 32, bytes: 18 },
  Q4_1: { code: 3, block: 32, bytes: 20 },
  Q5_0: { code: 6, block: 32, bytes: 22 },
  Q5_1: { code: 7, block: 32, bytes: 24 },
  Q8_0: { code: 8, block: 32, bytes: 34 },
  Q8_1: { code: 9, block: 32, bytes: 40 },
  Q2_K: { code: 10, block: 256, bytes: 84 },
  Q3_K: { code: 11, block: 256, bytes: 110 },
  Q4_K: { code: 12, block: 256, bytes: 144 },
  Q5_K: { code: 13, block: 256, bytes: 176 },
  Q6_K: { code: 14, block: 256, bytes: 210 },
  Q8_K: { code: 15, block: 256, bytes: 292 },
  I8: { code: 24, block: 1, bytes: 1 },
  I16: { code: 25, block: 1, bytes: 2 },
  I32: { code: 26, block: 1, bytes: 4 },
  I64: { code: 27, block: 1, bytes: 8 },
  F64: { code: 28, block: 1, bytes: 8 },
  BF16: { code: 30, block: 1, bytes: 2 },
};
export const TENSOR_TYPE_NAMES = new Map(Object.entries(TENSOR_TYPES).map(([k, v]) => [v.code, k]));

/** Bytes of a tensor of `shape` (GGUF order, ne0 first) in `type`; null when ne0 is not a whole number of blocks. */
export function tensorBytes(shape: readonly number[], type: string): number | null {
  const t = TENSOR_TYPES[type];
  if (!t) return null;
  const ne0 = shape[0] ?? 1;
  if (ne0 % t.block !== 0) return null;
  return (shape.reduce((a, b) => a * b, 1) / t.block) * t.bytes;
}

export const alignUp = (n: number, a: number) => Math.ceil(n / a) * a;
