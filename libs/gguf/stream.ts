import { Q8_0_BLOCK, decodeInto, elementBytes, encode } from './quant';
import type { GgufTensorType } from './format';

/** Float values held between chunks: a whole number of units is encoded at a time. */
const TARGET_VALUES = 1 << 20;

export interface SourceChunk {
  data: Buffer;
  /** The dtype of `data` (F32, F16, BF16 or F64). */
  dtype: string;
}

export interface EncodeOptions {
  type: GgufTensorType;
  /** Elements per row (ne0). */
  rowLength: number;
  /**
   * llama.cpp's q/k row order for rotary attention: rows come in groups (one per head) of `groupRows`, and
   * within a group row (a, b) of the (2, groupRows / 2) split moves to (b, a).
   */
  permuteGroupRows?: number;
  /** Called with each source chunk once its bytes are decoded (to give a pooled buffer back). */
  release?: (b: Buffer) => void;
  /** Where output buffers come from (a pool's take); they go to the consumer, who gives them back. */
  take?: (n: number) => Buffer;
}

/**
 * A tensor's bytes in GGUF encoding, from its source bytes in their own dtype, chunk by chunk: at most one
 * unit (a Q8_0 block, or a head's rows when permuting) plus a chunk is held, never the whole tensor.
 */
export async function* encodeTensor(chunks: AsyncIterable<SourceChunk>, opts: EncodeOptions): AsyncGenerator<Buffer> {
  if (!opts.permuteGroupRows && opts.type !== 'Q8_0') {
    yield* sameTypeOrEncode(chunks, opts);
    return;
  }
  const unit = opts.permuteGroupRows ? opts.permuteGroupRows * opts.rowLength : opts.type === 'Q8_0' ? Q8_0_BLOCK : 1;
  if (opts.type === 'Q8_0' && unit % Q8_0_BLOCK !== 0) throw new Error(`internal: Q8_0 unit of ${unit} values`);
  const cap = Math.max(unit, Math.floor(TARGET_VALUES / unit) * unit);
  let acc = new Float32Array(cap);
  const perm = opts.permuteGroupRows ? new Float32Array(cap) : null;
  let filled = 0;
  const flush = (n: number): Buffer => {
    let vals = acc.subarray(0, n);
    if (perm) {
      const g = opts.permuteGroupRows!;
      const half = g / 2;
      const L = opts.rowLength;
      for (let base = 0; base < n; base += g * L) {
        for (let j = 0; j < g; j++) {
          const old = (j & 1) * half + (j >> 1);
          perm.set(acc.subarray(base + old * L, base + (old + 1) * L), base + j * L);
        }
      }
      vals = perm.subarray(0, n);
    }
    const size = elementBytes(opts.type, n);
    const out = opts.take ? opts.take(size) : Buffer.allocUnsafe(size);
    encode(vals, opts.type, out);
    return out;
  };
  for await (const { data, dtype } of chunks) {
    const size = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
    let off = 0;
    while (off < data.length) {
      const take = Math.min((data.length - off) / size, cap - filled);
      filled += decodeInto(data.subarray(off, off + take * size), dtype, acc, filled);
      off += take * size;
      if (filled === cap) {
        yield flush(cap);
        filled = 0;
      }
    }
    opts.release?.(data);
    const whole = Math.floor(filled / unit) * unit;
    if (whole > 0 && whole >= cap / 2) {
      yield flush(whole);
      acc.copyWithin(0, whole, filled);
      filled -= whole;
    }
  }
  if (filled % unit !== 0) throw new Error(`internal: ${filled} values left over (units of ${unit})`);
  if (filled > 0) yield flush(filled);
  acc = new Float32Array(0);
}

/**
 * Unpermuted F32/F16/BF16 tensors: bytes already in the target type pass through (the converter's cast is the
 * identity there, but for BF16's NaNs, made quiet as ggml does); others go through float32 chunk by chunk.
 */
async function* sameTypeOrEncode(chunks: AsyncIterable<SourceChunk>, opts: EncodeOptions): AsyncGenerator<Buffer> {
  let acc: Float32Array | null = null;
  for await (const { data, dtype } of chunks) {
    if (dtype === opts.type) {
      // Handed on as it is: the consumer gives it back once written.
      const out = data;
      if (dtype === 'BF16') {
        const v = out.byteOffset % 2 === 0 ? new Uint16Array(out.buffer, out.byteOffset, out.length >>> 1) : null;
        if (v) {
          for (let i = 0; i < v.length; i++) if ((v[i]! & 0x7fff) > 0x7f80) v[i] = v[i]! | 0x40;
        } else {
          for (let i = 0; i < out.length; i += 2) if ((out.readUInt16LE(i) & 0x7fff) > 0x7f80) out.writeUInt16LE(out.readUInt16LE(i) | 0x40, i);
        }
      }
      yield out;
      continue;
    }
    const size = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
    const n = data.length / size;
    if (!acc || acc.length < n) acc = new Float32Array(n);
    decodeInto(data, dtype, acc, 0);
    opts.release?.(data);
    const outSize = elementBytes(opts.type, n);
    const out = opts.take ? opts.take(outSize) : Buffer.allocUnsafe(outSize);
    encode(acc.subarray(0, n), opts.type, out);
    yield out;
  }
}
