/**
 * Chunk buffers for streaming writes, reused instead of allocated per chunk: a fresh 16 MB buffer per chunk
 * costs page faults and, worse, full garbage collections driven by external memory (they took half the time
 * of a bf16 → bf16 write). A taken buffer is the taker's until given back; give back only what nothing reads.
 */
export class ChunkPool {
  private readonly free: ArrayBuffer[] = [];
  private readonly ours = new WeakSet<ArrayBuffer>();

  constructor(
    readonly chunkBytes: number,
    /** Free buffers kept for reuse; more given back than this are left to the garbage collector. */
    private readonly keep = 6,
  ) {}

  /** A buffer of n bytes (contents undefined); larger than a chunk: a one-off allocation the pool never takes back. */
  take(n: number): Buffer {
    if (n > this.chunkBytes) return Buffer.allocUnsafeSlow(n);
    let ab = this.free.pop();
    if (!ab) {
      ab = new ArrayBuffer(this.chunkBytes);
      this.ours.add(ab);
    }
    return Buffer.from(ab, 0, n);
  }

  /** Returns a buffer from take(); anything else (and a buffer already returned) is ignored. */
  give(b: Uint8Array): void {
    const ab = b.buffer as ArrayBuffer;
    if (!this.ours.has(ab) || this.free.includes(ab) || this.free.length >= this.keep) return;
    this.free.push(ab);
  }

  /** Free buffers held now (for tests). */
  get held(): number {
    return this.free.length;
  }
}
