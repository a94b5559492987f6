import { Q8_0_BLOCK, decodeInto, elementBytes, encode } from './quant';
import { QuantKernels, isSrcDtype, type SrcDtype } from './quant-wasm';
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
  const k = takeKernels(cap);
  if (k) {
    try {
      yield* encodeWasm(chunks, opts, k, unit, cap);
    } finally {
      giveKernels(k);
    }
    return;
  }
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

/** Kernels (and their memory) kept for the next tensor: one per tensor being encoded at a time. */
const idle: QuantKernels[] = [];
function takeKernels(cap: number): QuantKernels | null {
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
 * encodeTensor through the WebAssembly kernels: source bytes are copied into the kernels' memory as they are
 * (a whole number of units at a time; the q/k permutation moves rows of those bytes), decoded and encoded
 * there in one pass, and the output copied out. Values held from one chunk to the next stay in their own
 * dtype; a tensor whose chunks change dtype mid-unit holds them as float32 from there (F64 always as
 * float32, rounded as decodeInto rounds).
 */
async function* encodeWasm(chunks: AsyncIterable<SourceChunk>, opts: EncodeOptions, k: QuantKernels, unit: number, cap: number): AsyncGenerator<Buffer> {
  const mem = k.mem;
  let held: SrcDtype = 'F32';
  let filled = 0;
  const flush = (n: number): Buffer => {
    const es = SRC_SIZE[held];
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
    k.run(held, opts.type as never, n, src, k.OUT);
    const size = elementBytes(opts.type, n);
    const out = opts.take ? opts.take(size) : Buffer.allocUnsafe(size);
    out.set(mem.subarray(k.OUT, k.OUT + size));
    mem.copyWithin(k.A, k.A + n * es, k.A + filled * es);
    filled -= n;
    return out;
  };
  for await (const { data, dtype } of chunks) {
    const size = sourceSize(dtype);
    let off = 0;
    while (off < data.length) {
      if (filled === 0) held = isSrcDtype(dtype) ? dtype : 'F32';
      if (dtype !== held && held !== 'F32') {
        // A change of dtype mid-unit: what is held becomes float32 (exact).
        mem.copyWithin(k.B, k.A, k.A + filled * 2);
        k.run(held, 'F32', filled, k.B, k.A);
        held = 'F32';
      }
      const m = Math.min((data.length - off) / size, cap - filled);
      const piece = data.subarray(off, off + m * size);
      if (dtype === held) mem.set(piece, k.A + filled * size);
      else if (isSrcDtype(dtype)) {
        mem.set(piece, k.B);
        k.run(dtype, 'F32', m, k.B, k.A + filled * 4);
      } else decodeInto(piece, dtype, k.f32(k.A, cap), filled);
      filled += m;
      off += m * size;
      if (filled === cap) yield flush(cap);
    }
    opts.release?.(data);
    const whole = Math.floor(filled / unit) * unit;
    if (whole > 0 && whole >= cap / 2) yield flush(whole);
  }
  if (filled % unit !== 0) throw new Error(`internal: ${filled} values left over (units of ${unit})`);
  if (filled > 0) yield flush(filled);
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
    const size = sourceSize(dtype);
    const n = data.length / size;
    const k = isSrcDtype(dtype) ? takeKernels(TARGET_VALUES) : null;
    if (k) {
      // Through the kernels, a piece at a time.
      const outSize = elementBytes(opts.type, n);
      const out = opts.take ? opts.take(outSize) : Buffer.allocUnsafe(outSize);
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
      opts.release?.(data);
      yield out;
      continue;
    }
    if (!acc || acc.length < n) acc = new Float32Array(n);
    decodeInto(data, dtype, acc, 0);
    opts.release?.(data);
    const outSize = elementBytes(opts.type, n);
    const out = opts.take ? opts.take(outSize) : Buffer.allocUnsafe(outSize);
    encode(acc.subarray(0, n), opts.type, out);
    yield out;
  }
}
