import { Q8_0_BLOCK, decodeInto, elementBytes, encode } from './quant';
import { QuantKernels, isSrcDtype, quantWasmEnabled, type SrcDtype } from './quant-wasm';
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

/** Kernels (and their memory) kept for the next tensor: one per tensor being encoded at a time. */
const idle: QuantKernels[] = [];
function takeKernels(cap: number): QuantKernels | null {
  if (!quantWasmEnabled()) return null;
  const i = idle.findIndex((k) => k.cap >= cap);
  if (i >= 0) return idle.splice(i, 1)[0]!;
  return QuantKernels.create(Math.max(cap, TARGET_VALUES));
}
function giveKernels(k: QuantKernels): void {
  if (idle.length < 4) idle.push(k);
}

const SRC_SIZE: Record<SrcDtype, number> = { F32: 4, BF16: 2, F16: 2 };
const sourceSize = (dtype: string) => (dtype === 'F64' ? 8 : dtype === 'F32' ? 4 : 2);

/**
 * A tensor's (or a run of whole rows of it) GGUF encoding, fed chunk by chunk: at most one unit (a Q8_0 block,
 * or a head's rows when permuting) plus a chunk is held, never the whole tensor. Each push returns the encoded
 * bytes ready so far, in order. Through the WebAssembly kernels (quant-wasm.ts) where they load, the scalar
 * kernels of quant.ts (the same bytes) where not.
 */
export class TensorEncoder {
  private readonly unit: number;
  private readonly cap: number;
  /** Unpermuted F32/F16/BF16: chunk by chunk, nothing held. */
  private readonly elementwise: boolean;
  private filled = 0;
  // Scalar path: values held as float32.
  private acc: Float32Array | null = null;
  private perm: Float32Array | null = null;
  // Kernel path: values held in the kernels' memory in their own dtype (`held`), float32 after a change of dtype.
  private k: QuantKernels | null | undefined = undefined;
  private held: SrcDtype = 'F32';

  constructor(private readonly opts: EncodeOptions) {
    this.elementwise = !opts.permuteGroupRows && opts.type !== 'Q8_0';
    this.unit = opts.permuteGroupRows ? opts.permuteGroupRows * opts.rowLength : opts.type === 'Q8_0' ? Q8_0_BLOCK : 1;
    if (opts.type === 'Q8_0' && this.unit % Q8_0_BLOCK !== 0) throw new Error(`internal: Q8_0 unit of ${this.unit} values`);
    this.cap = Math.max(this.unit, Math.floor(TARGET_VALUES / this.unit) * this.unit);
  }

  private out(size: number): Buffer {
    return this.opts.take ? this.opts.take(size) : Buffer.allocUnsafe(size);
  }

  private done(data: Buffer): void {
    if (!this.opts.borrowed) this.opts.release?.(data);
  }

  /** Lazily, so one output buffer is out at a time when the consumer writes each before asking for the next. */
  *push(data: Buffer, dtype: string): Generator<Buffer> {
    if (this.elementwise) {
      yield* this.pushElementwise(data, dtype);
      return;
    }
    if (this.k === undefined) this.k = takeKernels(this.cap);
    if (this.k) yield* this.pushUnitsWasm(this.k, data, dtype);
    else yield* this.pushUnits(data, dtype);
  }

  /** What is left once the last chunk is in (an error if not whole units). */
  *end(): Generator<Buffer> {
    if (this.elementwise) return;
    if (this.filled % this.unit !== 0) throw new Error(`internal: ${this.filled} values left over (units of ${this.unit})`);
    if (this.filled > 0) yield this.k ? this.flushWasm(this.k, this.filled) : this.flush(this.filled);
    this.filled = 0;
    this.acc = this.perm = null;
    if (this.k) giveKernels(this.k);
    this.k = undefined;
  }

  /**
   * Bytes already in the target type pass through (the converter's cast is the identity there, but for BF16's
   * NaNs, made quiet as ggml does); others are encoded chunk by chunk.
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
    const size = sourceSize(dtype);
    const n = data.length / size;
    const out = this.out(elementBytes(opts.type, n));
    const k = isSrcDtype(dtype) ? takeKernels(TARGET_VALUES) : null;
    if (k) {
      // Through the kernels, a piece at a time.
      const ob = elementBytes(opts.type, 1);
      try {
        for (let at = 0; at < n; at += k.cap) {
          const m = Math.min(k.cap, n - at);
          k.mem.set(data.subarray(at * size, (at + m) * size), k.A);
          k.run(dtype as SrcDtype, opts.type, m, k.A, k.OUT);
          out.set(k.mem.subarray(k.OUT, k.OUT + m * ob), at * ob);
        }
      } finally {
        giveKernels(k);
      }
    } else {
      if (!this.acc || this.acc.length < n) this.acc = new Float32Array(n);
      decodeInto(data, dtype, this.acc, 0);
      encode(this.acc.subarray(0, n), opts.type, out);
    }
    this.done(data);
    yield out;
  }

  // ----- the scalar path

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
    const size = sourceSize(dtype);
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
    this.done(data);
    const whole = Math.floor(this.filled / unit) * unit;
    if (whole > 0 && whole >= cap / 2) {
      const out = this.flush(whole);
      this.acc.copyWithin(0, whole, this.filled);
      this.filled -= whole;
      yield out;
    }
  }

  // ----- the kernel path: source bytes are copied into the kernels' memory as they are (the q/k permutation
  // moves rows of those bytes), decoded and encoded there in one pass, and the output copied out. A tensor whose
  // chunks change dtype mid-unit holds float32 from there (F64 always as float32, rounded as decodeInto rounds).

  /** Encodes the first `n` held values and moves the rest to the front. */
  private flushWasm(k: QuantKernels, n: number): Buffer {
    const { opts } = this;
    const mem = k.mem;
    const es = SRC_SIZE[this.held];
    let src = k.A;
    if (opts.permuteGroupRows) {
      const g = opts.permuteGroupRows;
      const half = g / 2;
      const row = opts.rowLength * es;
      for (let base = 0; base < n * es; base += g * row) {
        for (let j = 0; j < g; j++) {
          const old = (j & 1) * half + (j >> 1);
          mem.copyWithin(k.B + base + j * row, k.A + base + old * row, k.A + base + (old + 1) * row);
        }
      }
      src = k.B;
    }
    k.run(this.held, opts.type as never, n, src, k.OUT);
    const size = elementBytes(opts.type, n);
    const out = this.out(size);
    out.set(mem.subarray(k.OUT, k.OUT + size));
    mem.copyWithin(k.A, k.A + n * es, k.A + this.filled * es);
    this.filled -= n;
    return out;
  }

  private *pushUnitsWasm(k: QuantKernels, data: Buffer, dtype: string): Generator<Buffer> {
    const { cap, unit } = this;
    const mem = k.mem;
    const size = sourceSize(dtype);
    let off = 0;
    while (off < data.length) {
      if (this.filled === 0) this.held = isSrcDtype(dtype) ? dtype : 'F32';
      if (dtype !== this.held && this.held !== 'F32') {
        // A change of dtype mid-unit: what is held becomes float32 (exact).
        mem.copyWithin(k.B, k.A, k.A + this.filled * 2);
        k.run(this.held, 'F32', this.filled, k.B, k.A);
        this.held = 'F32';
      }
      const m = Math.min((data.length - off) / size, cap - this.filled);
      const piece = data.subarray(off, off + m * size);
      if (dtype === this.held) mem.set(piece, k.A + this.filled * size);
      else if (isSrcDtype(dtype)) {
        mem.set(piece, k.B);
        k.run(dtype, 'F32', m, k.B, k.A + this.filled * 4);
      } else decodeInto(piece, dtype, k.f32(k.A, cap), this.filled);
      this.filled += m;
      off += m * size;
      if (this.filled === cap) yield this.flushWasm(k, cap);
    }
    this.done(data);
    const whole = Math.floor(this.filled / unit) * unit;
    if (whole > 0 && whole >= cap / 2) yield this.flushWasm(k, whole);
  }
}

/** A tensor's bytes in GGUF encoding, from its source bytes in their own dtype, chunk by chunk (TensorEncoder). */
export async function* encodeTensor(chunks: AsyncIterable<SourceChunk>, opts: EncodeOptions): AsyncGenerator<Buffer> {
  const enc = new TensorEncoder(opts);
  for await (const { data, dtype } of chunks) yield* enc.push(data, dtype);
  yield* enc.end();
}
