import { WasmChunk } from './float-wasm';
import { DTYPE_SIZES, isFloatDtype } from './dtype-table';

/**
 * Chunk buffers for streaming writes, reused instead of allocated per chunk: a fresh 16 MB buffer per chunk
 * costs page faults and, worse, full garbage collections driven by external memory (they took half the time
 * of a bf16 → bf16 write). Each buffer is a WebAssembly memory with the cast kernels bound to it where
 * WebAssembly SIMD is available, so a cast to a dtype no wider runs in place. A taken buffer is the taker's
 * until given back; give back only what nothing reads.
 */
export class ChunkPool {
  private readonly free: ArrayBuffer[] = [];
  private readonly ours = new WeakSet<ArrayBuffer>();
  private readonly kernels = new WeakMap<ArrayBuffer, WasmChunk>();
  private wasm: boolean;

  constructor(
    readonly chunkBytes: number,
    /** Free buffers kept for reuse; more given back than this are left to the garbage collector. */
    private readonly keep = 6,
    opts: { wasm?: boolean } = {},
  ) {
    this.wasm = opts.wasm ?? true;
  }

  /** A buffer of n bytes (contents undefined); larger than a chunk: a one-off allocation the pool never takes back. */
  take(n: number): Buffer {
    if (n > this.chunkBytes) return Buffer.allocUnsafeSlow(n);
    let ab = this.free.pop();
    if (!ab) {
      const chunk = this.wasm ? WasmChunk.create(this.chunkBytes) : null;
      if (this.wasm && !chunk) this.wasm = false; // no WebAssembly here: plain buffers from now on
      ab = chunk ? chunk.buffer : new ArrayBuffer(this.chunkBytes);
      if (chunk) this.kernels.set(ab, chunk);
      this.ours.add(ab);
    }
    return Buffer.from(ab, 0, n);
  }

  /** Returns a buffer from take() (or a view of its start, as castInPlace gives); anything else is ignored. */
  give(b: Uint8Array): void {
    const ab = b.buffer as ArrayBuffer;
    if (!this.ours.has(ab) || this.free.includes(ab) || this.free.length >= this.keep) return;
    this.free.push(ab);
  }

  /**
   * `buf` (a whole buffer from take()) cast from `from` to `to` where it lies, as a view of the same buffer;
   * null when that cannot be done here (not a WebAssembly chunk, a widening cast, another dtype).
   */
  castInPlace(buf: Buffer, from: string, to: string): Buffer | null {
    const chunk = this.kernels.get(buf.buffer as ArrayBuffer);
    if (!chunk || buf.byteOffset !== 0 || !isFloatDtype(from) || !isFloatDtype(to)) return null;
    const a = DTYPE_SIZES[from]!, b = DTYPE_SIZES[to]!;
    if (b > a) return null;
    const n = buf.length / a;
    chunk.castInPlace(n, from, to);
    return Buffer.from(buf.buffer, 0, n * b);
  }

  /** Free buffers held now (for tests). */
  get held(): number {
    return this.free.length;
  }
}
