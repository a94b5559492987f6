/**
 * A GGUF in several files, as llama.cpp's gguf-split and its converter's `--split-max-size` make them: each file a
 * GGUF of its own, named `…-00001-of-0000N.gguf`, the first holding the metadata, every one the `split.*` keys
 * (llama.cpp loads the first and finds the others by name). Ours puts the routers in the first file with the
 * metadata and the other tensors, in the converter's order, in files of at most the given size: the Hub takes
 * no file over 50 GB, and a prompt edit (which changes the routers only) rewrites the small first file alone.
 */
import { alignUp, DEFAULT_ALIGNMENT, tensorBytes } from './format';
import { ggufFileName, type GgufLayout, type GgufOutType, type GgufTensorSpec } from './architecture';
import type { GgufKv } from './types';

/** One file of a GGUF: the whole model's layout (one file), or a split's part of it. */
export interface GgufPart {
  file: string;
  /** Its metadata (the whole model's in the first file, with the split keys) and its tensors. */
  layout: GgufLayout;
  /** 0-based; the first file also takes the tokenizer keys. */
  index: number;
  count: number;
}

const five = (n: number) => String(n).padStart(5, '0');

/** The largest file the Hugging Face Hub takes. */
export const HUB_MAX_FILE_BYTES = 50e9;

/** Said of a GGUF file larger than the Hub takes (null when it is not). */
export function hubSizeWarning(part: GgufPart, bytes: number): string | null {
  if (bytes <= HUB_MAX_FILE_BYTES) return null;
  const gb = (bytes / 1e9).toFixed(1);
  return part.count === 1
    ? `${part.file} is ${gb} GB: the Hugging Face Hub takes no file over 50 GB; --gguf-split-max-size 50g (Nx: ggufSplitMaxSize) splits it into files llama.cpp loads`
    : `${part.file} is ${gb} GB, one tensor larger than the split size: the Hugging Face Hub takes no file over 50 GB`;
}

/** llama.cpp's split file names (llama_split_path): `model-bf16-00001-of-00003.gguf`. */
export const ggufSplitName = (type: GgufOutType, index: number, count: number) => `model-${type}-${five(index + 1)}-of-${five(count)}.gguf`;

/** A tensor whose bytes come from the routers (the prompts decide them). */
const isRouter = (t: GgufTensorSpec) => t.name.includes('.ffn_gate_inp') || t.segments.some((s) => s.tensor.parts.some((p) => p.kind === 'gates'));

/** Bytes a tensor takes in its file, padding included. */
const fileBytes = (t: GgufTensorSpec) => alignUp(tensorBytes(t.shape, t.type) ?? 0, DEFAULT_ALIGNMENT);

const splitKeys = (index: number, count: number, tensors: number): GgufKv[] => [
  { key: 'split.no', value: { type: 'u16', value: index } },
  { key: 'split.count', value: { type: 'u16', value: count } },
  { key: 'split.tensors.count', value: { type: 'i32', value: tensors } },
];

/**
 * The files of a model's GGUF: one (`maxBytes` undefined), or the routers with the metadata, then the other
 * tensors in order, a new file before one that would pass `maxBytes` (a tensor larger than that alone in its file).
 */
export function ggufParts(layout: GgufLayout, type: GgufOutType, maxBytes?: number): GgufPart[] {
  if (maxBytes === undefined) return [{ file: ggufFileName(type), layout, index: 0, count: 1 }];
  if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) throw new RangeError(`GGUF split size ${maxBytes}: a positive number of bytes is needed`);
  const groups: GgufTensorSpec[][] = [layout.tensors.filter(isRouter)];
  let cur: GgufTensorSpec[] = [];
  let bytes = 0;
  for (const t of layout.tensors) {
    if (isRouter(t)) continue;
    const n = fileBytes(t);
    if (cur.length > 0 && bytes + n > maxBytes) {
      groups.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(t);
    bytes += n;
  }
  if (cur.length > 0) groups.push(cur);
  const count = groups.length;
  const total = layout.tensors.length;
  return groups.map((tensors, index) => ({
    file: ggufSplitName(type, index, count),
    layout: { ...layout, metadata: [...(index === 0 ? layout.metadata : []), ...splitKeys(index, count, total)], tensors, warnings: index === 0 ? layout.warnings : [] },
    index,
    count,
  }));
}
