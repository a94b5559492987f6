// GGUF metadata values as the writer takes them and the reader returns them.
// Shared with the vocabulary producer (vocab.ts): keep this shape stable.
export type GgufScalarType = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'u64' | 'i64' | 'f32' | 'f64' | 'bool' | 'string';
export type GgufScalar = number | bigint | boolean | string;
export type GgufValue =
  | { type: GgufScalarType; value: GgufScalar }
  | { type: 'array'; itemType: GgufScalarType; value: GgufScalar[] };
export interface GgufKv {
  key: string;
  value: GgufValue;
}
