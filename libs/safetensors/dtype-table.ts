/**
 * The dtype facts, each written once: element sizes (the safetensors format's names), and per float dtype
 * torch's name, the other names a config.json may use, and the largest finite value. dtype.ts holds the codecs.
 */

/** Element sizes of every dtype name the safetensors format defines. */
export const DTYPE_SIZES: Readonly<Record<string, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, F8_E8M0: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  I64: 8, U64: 8, F64: 8,
};

/** The float dtypes a merge reads as numbers (FP8 needs its scale tensors, integers are quantised: neither is a plain weight). */
export const FLOAT_DTYPES = {
  F32: { torch: 'float32', aliases: ['float'], max: 3.4028234663852886e38 },
  F16: { torch: 'float16', aliases: ['half'], max: 65504 },
  BF16: { torch: 'bfloat16', aliases: [], max: 3.3895313892515355e38 },
  // Read (and kept when no output dtype is set), never chosen: the reference writes no float64.
  F64: { torch: 'float64', aliases: [], max: Number.MAX_VALUE },
} as const satisfies Record<string, { torch: string; aliases: readonly string[]; max: number }>;

/** A source weight's dtype, and an output tensor's (sources keep theirs when no output dtype is set). */
export type WeightDtype = keyof typeof FLOAT_DTYPES;
/** An output dtype, as a recipe's or a config's `dtype` names it. */
export type FloatDtype = Exclude<WeightDtype, 'F64'>;

export const WEIGHT_DTYPES = Object.keys(FLOAT_DTYPES) as [WeightDtype, ...WeightDtype[]];
export const OUTPUT_DTYPES = WEIGHT_DTYPES.filter((d): d is FloatDtype => d !== 'F64') as [FloatDtype, ...FloatDtype[]];
/** Torch names of the output dtypes, sorted (bfloat16, float16, float32): recipe errors and help texts. */
export const OUTPUT_DTYPE_NAMES = OUTPUT_DTYPES.map((d) => FLOAT_DTYPES[d].torch).sort();

export function isWeightDtype(d: string): d is WeightDtype {
  return Object.hasOwn(FLOAT_DTYPES, d);
}

export function isFloatDtype(d: string): d is FloatDtype {
  return isWeightDtype(d) && d !== 'F64';
}

export function dtypeToTorchName(d: FloatDtype): string {
  return FLOAT_DTYPES[d].torch;
}
