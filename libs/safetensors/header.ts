import { SafetensorsError } from '../errors';
import { DTYPE_SIZES } from './dtype';

export interface TensorInfo {
  name: string;
  dtype: string;
  shape: number[];
  /** Byte offsets relative to the start of the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  headerLength: number;
  /** Absolute file offset of the data section: 8 + header length. */
  dataStart: number;
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
}

/** Larger headers are refused before anything is allocated (the reference Rust reader uses the same bound). */
export const MAX_HEADER_BYTES = 100_000_000;

/** Reads the 8-byte length prefix; the caller reads that many bytes next. */
export function headerLengthFrom(prefix: Uint8Array, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix.byteLength < 8) {
    throw new SafetensorsError('truncated', `truncated safetensors file: ${fileSize} bytes, expected at least the 8-byte header length`, { file });
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError('header_too_large', `safetensors header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`, { file });
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw new SafetensorsError('header_past_end', `safetensors header length ${len} runs past the end of the file (${fileSize} bytes)`, { file });
  }
  return len;
}

/** Validates a header completely: JSON object, known dtypes, sizes that match shapes, offsets in bounds and disjoint. */
export function parseHeader(json: Uint8Array, headerLength: number, fileSize: number, file: string): SafetensorsHeader {
  let obj: unknown;
  try {
    obj = JSON.parse(Buffer.from(json.buffer, json.byteOffset, json.byteLength).toString('utf8'));
  } catch (e) {
    throw new SafetensorsError('bad_header', `safetensors header is not valid JSON (${(e as Error).message})`, { file });
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new SafetensorsError('bad_header', 'safetensors header must be a JSON object', { file });
  }
  const dataStart = 8 + headerLength;
  const dataLength = fileSize - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(obj as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
        throw new SafetensorsError('bad_header', '__metadata__ must be an object of strings', { file });
      }
      metadata = raw as Record<string, string>;
      continue;
    }
    const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const place = { file, tensor: name };
    if (t === null || typeof t !== 'object') throw new SafetensorsError('bad_header', 'entry must be an object with dtype, shape and data_offsets', place);
    if (typeof t.dtype !== 'string' || DTYPE_SIZES[t.dtype] === undefined) {
      throw new SafetensorsError('unknown_dtype', `unknown dtype ${JSON.stringify(t.dtype)} (known: ${Object.keys(DTYPE_SIZES).join(', ')})`, place);
    }
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new SafetensorsError('bad_header', `shape must be a list of non-negative integers, got ${JSON.stringify(t.shape)}`, place);
    }
    const off = t.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1]) {
      throw new SafetensorsError('bad_header', `data_offsets must be [begin, end] with 0 <= begin <= end, got ${JSON.stringify(off)}`, place);
    }
    const shape = t.shape as number[];
    const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_SIZES[t.dtype]!;
    const [begin, end] = off as [number, number];
    if (end - begin !== expected) {
      throw new SafetensorsError('size_mismatch', `shape [${shape.join(', ')}] × ${t.dtype} needs ${expected} bytes but data_offsets span ${end - begin}`, place);
    }
    if (end > dataLength) {
      throw new SafetensorsError('offset_past_end', `data_offsets [${begin}, ${end}] run past the end of the data (${dataLength} bytes; the file may be truncated)`, place);
    }
    tensors.set(name, { name, dtype: t.dtype, shape, begin, end });
  }
  // Zero-size tensors own no bytes; among the rest, each must start at or after the furthest end so far
  // (comparing with the previous tensor only would let a zero-size entry hide an overlap).
  const sorted = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin || a.end - b.end);
  let reach: TensorInfo | null = null;
  for (const cur of sorted) {
    if (reach && cur.begin < reach.end) {
      throw new SafetensorsError('overlap', `data_offsets [${cur.begin}, ${cur.end}] overlap tensor ${reach.name} [${reach.begin}, ${reach.end}]`, { file, tensor: cur.name });
    }
    if (!reach || cur.end > reach.end) reach = cur;
  }
  return { headerLength, dataStart, metadata, tensors };
}
