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
  /**
   * The source chunks stay the caller's (they are also written elsewhere, as the shards are): never changed,
   * released or handed on; bytes already in the target type are copied into a taken buffer.
   */
  borrowed?: boolean;
}

/**
 * A tensor's (or a run of whole rows of it) GGUF encoding, fed chunk by chunk: at most one unit (a Q8_0 block,
 * or a head's rows when permuting) plus a chunk is held, never the whole tensor. Each push returns the encoded
 * bytes ready so far, in order.
 */
export class TensorEncoder {
  private readonly unit: number;
  private readonly cap: number;
  private acc: Float32Array | null = null;
  private perm: Float32Array | null = null;
  private filled = 0;
  /** Unpermuted F32/F16/BF16: chunk by chunk, nothing held. */
  private readonly elementwise: boolean;

  constructor(private readonly opts: EncodeOptions) {
    this.elementwise = !opts.permuteGroupRows && opts.type !== 'Q8_0';
    this.unit = opts.permuteGroupRows ? opts.permuteGroupRows * opts.rowLength : opts.type === 'Q8_0' ? Q8_0_BLOCK : 1;
    if (opts.type === 'Q8_0' && this.unit % Q8_0_BLOCK !== 0) throw new Error(`internal: Q8_0 unit of ${this.unit} values`);
    this.cap = Math.max(this.unit, Math.floor(TARGET_VALUES / this.unit) * this.unit);
  }

  private out(size: number): Buffer {
    return this.opts.take ? this.opts.take(size) : Buffer.allocUnsafe(size);
  }

  /** Lazily, so one output buffer is out at a time when the consumer writes each before asking for the next. */
  *push(data: Buffer, dtype: string): Generator<Buffer> {
    if (this.elementwise) yield* this.pushElementwise(data, dtype);
    else yield* this.pushUnits(data, dtype);
  }

  /** What is left once the last chunk is in (an error if not whole units). */
  *end(): Generator<Buffer> {
    if (this.elementwise) return;
    if (this.filled % this.unit !== 0) throw new Error(`internal: ${this.filled} values left over (units of ${this.unit})`);
    if (this.filled > 0) yield this.flush(this.filled);
    this.filled = 0;
    this.acc = this.perm = null;
  }

  /**
   * Bytes already in the target type pass through (the converter's cast is the identity there, but for BF16's
   * NaNs, made quiet as ggml does); others go through float32 chunk by chunk.
   */
  private *pushElementwise(data: Buffer, dtype: string): Generator<Buffer> {
    const { opts } = this;
    if (dtype === opts.type) {
      // Handed on as it is (the consumer gives it back once written), or a copy when the chunk is borrowed.
      let out = data;
      if (opts.borrowed) {
        out = this.out(data.length);
        data.copy(out);
      }
      if (dtype === 'BF16') {
        const v = out.byteOffset % 2 === 0 ? new Uint16Array(out.buffer, out.byteOffset, out.length >>> 1) : null;
        if (v) {
          for (let i = 0; i < v.length; i++) if ((v[i]! & 0x7fff) > 0x7f80) v[i] = v[i]! | 0x40;
        } else {
          for (let i = 0; i < out.length; i += 2) if ((out.readUInt16LE(i) & 0x7fff) > 0x7f80) out.writeUInt16LE(out.readUInt16LE(i) | 0x40, i);
        }
      }
      yield out;
      return;
    }
    const size = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
    const n = data.length / size;
    if (!this.acc || this.acc.length < n) this.acc = new Float32Array(n);
    decodeInto(data, dtype, this.acc, 0);
    if (!opts.borrowed) opts.release?.(data);
    const out = this.out(elementBytes(opts.type, n));
    encode(this.acc.subarray(0, n), opts.type, out);
    yield out;
  }

  private flush(n: number): Buffer {
    let vals = this.acc!.subarray(0, n);
    if (this.perm) {
      const g = this.opts.permuteGroupRows!;
      const half = g / 2;
      const L = this.opts.rowLength;
      for (let base = 0; base < n; base += g * L) {
        for (let j = 0; j < g; j++) {
          const old = (j & 1) * half + (j >> 1);
          this.perm.set(this.acc!.subarray(base + old * L, base + (old + 1) * L), base + j * L);
        }
      }
      vals = this.perm.subarray(0, n);
    }
    const out = this.out(elementBytes(this.opts.type, n));
    encode(vals, this.opts.type, out);
    return out;
  }

  private *pushUnits(data: Buffer, dtype: string): Generator<Buffer> {
    const { cap, unit } = this;
    if (!this.acc) {
      this.acc = new Float32Array(cap);
      if (this.opts.permuteGroupRows) this.perm = new Float32Array(cap);
    }
    const size = dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2;
    let off = 0;
    while (off < data.length) {
      const take = Math.min((data.length - off) / size, cap - this.filled);
      this.filled += decodeInto(data.subarray(off, off + take * size), dtype, this.acc, this.filled);
      off += take * size;
      if (this.filled === cap) {
        const out = this.flush(cap);
        this.filled = 0;
        yield out;
      }
    }
    if (!this.opts.borrowed) this.opts.release?.(data);
    const whole = Math.floor(this.filled / unit) * unit;
    if (whole > 0 && whole >= cap / 2) {
      const out = this.flush(whole);
      this.acc.copyWithin(0, whole, this.filled);
      this.filled -= whole;
      yield out;
    }
  }
}

/** A tensor's bytes in GGUF encoding, from its source bytes in their own dtype, chunk by chunk (TensorEncoder). */
export async function* encodeTensor(chunks: AsyncIterable<SourceChunk>, opts: EncodeOptions): AsyncGenerator<Buffer> {
  const enc = new TensorEncoder(opts);
  for await (const { data, dtype } of chunks) yield* enc.push(data, dtype);
  yield* enc.end();
}
