import { constants, readSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { SafetensorsError } from '../errors';
import { wasmApi } from '../wasm';

/**
 * Where a large output file's bytes go: appended in order, then `finish` puts them on the disk.
 *
 * Direct (`O_DIRECT`, where the platform and file system take it): bytes are gathered into aligned staging
 * blocks, and each full block goes to the disk in one write straight from memory while the next fills. The kernel
 * does not copy them into the page cache first: on the VMs we measured, that copy into fresh page-cache pages took
 * most of a write's CPU (a 2.17 GB bf16 shard alone: 0.53 CPU-s direct against 1.3-2.0 buffered, in the same wall
 * time), which a first build pays while its forward pass wants both cores; and the output takes no room from the
 * source models in the page cache.
 * The last block is padded to the alignment and the file truncated to its size.
 *
 * Buffered (elsewhere: tmpfs, macOS, a file system that refuses direct writes): plain writes at their offsets,
 * flushed to the disk in the background every `flushBytes` so that the final fsync does not wait for all of them.
 */
export interface OutputFile {
  readonly direct: boolean;
  /** Appends `b` (taken before this resolves: the caller may reuse it after). */
  put(b: Uint8Array): Promise<void>;
  /** Appends `length` bytes of the open file `fd` from `offset` (`file` and `tensor` name them in errors). */
  putRange(fd: number, range: { file: string; offset: number; length: number; tensor: string }): Promise<void>;
  /** Every byte on the disk (fsync) and the file exactly as long as what was appended; returns that length. */
  finish(): Promise<number>;
  /** Closes the file (after finish, or to give up): waits for a write in flight. */
  close(): Promise<void>;
}

export interface OutputFileOptions {
  /** false: buffered writes even where direct ones are possible (default: direct where possible, for large files). */
  direct?: boolean;
  /** The file's expected length: one under `directMinBytes` is written buffered (its staging would cost more). */
  size?: number;
  /** Smallest file written direct (default DIRECT_MIN_BYTES). */
  directMinBytes?: number;
  /** Buffered: bytes written between two background flushes (default 64 MiB). */
  flushBytes?: number;
  /** Buffered: background flushes started (for tests). */
  stats?: { flushes: number };
}

/** Smallest file written direct: a router shard of a few MB is cheaper through the page cache than staged. */
export const DIRECT_MIN_BYTES = 32 << 20;
/** Direct I/O's unit: offsets, lengths and memory of direct writes are multiples of it (covers 512 B and 4 KiB blocks). */
export const DIRECT_ALIGN = 4096;
/** One staging block: written in one call while the next fills. */
export const STAGE_BYTES = 8 << 20;
/** Bytes written between two background flushes of a buffered file. */
const FLUSH_BYTES = 64 << 20;
/** Bytes copied through a buffer this small stay in the CPU's cache between the read and the write. */
const COPY_SLICE = 128 << 10;

/** Creates (or truncates) `path` for writing, direct where the platform and its file system allow. */
export async function openOutputFile(path: string, opts: OutputFileOptions = {}): Promise<OutputFile> {
  const O_DIRECT = constants.O_DIRECT;
  if (opts.direct !== false && O_DIRECT !== undefined && process.platform === 'linux' && (opts.size ?? Infinity) >= (opts.directMinBytes ?? DIRECT_MIN_BYTES)) {
    let fh: FileHandle | null = null;
    try {
      fh = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | O_DIRECT, 0o666);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e; // the file system has no direct I/O
    }
    if (fh) return new DirectFile(path, fh);
  }
  return new BufferedFile(await open(path, 'w'), opts);
}

/** A range's source file ended before the range did. */
const rangeEnded = (r: { file: string; length: number; tensor: string }) => new SafetensorsError('truncated', `file ended while copying ${r.length} bytes`, { file: r.file, tensor: r.tensor });

/** Tests: how many of the coming direct writes fail with EINVAL, as where a file system takes O_DIRECT at open but not the writes. */
export const refusedDirectWrites = { left: 0 };

/** Staging blocks per file: one fills while the others' writes are in flight (the disk wants a few at once). */
const STAGES = 4;

/** Staging memory: WebAssembly memories start page-aligned, as direct writes need; STAGES blocks each, reused. */
const spareStages: Buffer[] = [];

function takeStages(): Buffer {
  return spareStages.pop() ?? Buffer.from(new (wasmApi().Memory)({ initial: (STAGES * STAGE_BYTES) / 65536 }).buffer);
}

class DirectFile implements OutputFile {
  direct = true;
  private readonly memory = takeStages();
  private readonly stages = Array.from({ length: STAGES }, (_, i) => this.memory.subarray(i * STAGE_BYTES, (i + 1) * STAGE_BYTES));
  /** Each stage's write in flight, if any. */
  private readonly inflight: (Promise<void> | null)[] = new Array(STAGES).fill(null);
  private cur = 0;
  /** Bytes in the current stage. */
  private fill = 0;
  /** File offset of the current stage's first byte. */
  private at = 0;
  /** Set when the file system refused a direct write after taking the open: the rest goes through this plain fd. */
  private plain: Promise<FileHandle> | null = null;
  private closed = false;

  constructor(
    private readonly path: string,
    private readonly fh: FileHandle,
  ) {}

  async put(b: Uint8Array): Promise<void> {
    for (let off = 0; off < b.length;) {
      const n = Math.min(STAGE_BYTES - this.fill, b.length - off);
      this.stages[this.cur].set(b.subarray(off, off + n), this.fill);
      this.fill += n;
      off += n;
      if (this.fill === STAGE_BYTES) await this.submit();
    }
  }

  async putRange(fd: number, r: { file: string; offset: number; length: number; tensor: string }): Promise<void> {
    // Read straight into the stage: the page cache's copy is the only one the CPU makes.
    for (let done = 0; done < r.length;) {
      const want = Math.min(STAGE_BYTES - this.fill, r.length - done);
      const n = readSync(fd, this.stages[this.cur], this.fill, want, r.offset + done);
      if (n === 0) throw rangeEnded(r);
      this.fill += n;
      done += n;
      if (this.fill === STAGE_BYTES) await this.submit();
    }
  }

  /** The current stage to the disk, then the next stage once its own write is done (its memory is filled next). */
  private async submit(padTo = this.fill): Promise<void> {
    const w = this.writeAt(this.stages[this.cur]!.subarray(0, padTo), this.at);
    w.catch(() => undefined); // awaited before the stage is filled again, or by finish or close: never unhandled meanwhile
    this.inflight[this.cur] = w;
    this.at += this.fill;
    this.cur = (this.cur + 1) % STAGES;
    this.fill = 0;
    const next = this.inflight[this.cur];
    this.inflight[this.cur] = null;
    await next;
  }

  private async writeAt(b: Buffer, at: number): Promise<void> {
    for (let done = 0; done < b.length;) {
      const fh = this.plain ? await this.plain : this.fh;
      try {
        if (!this.plain && refusedDirectWrites.left > 0 && refusedDirectWrites.left--) throw Object.assign(new Error('EINVAL (refusedDirectWrites)'), { code: 'EINVAL' });
        done += (await fh.write(b, done, b.length - done, at + done)).bytesWritten;
      } catch (e) {
        // Open took O_DIRECT but the write did not (an alignment this file system wants larger): plain from here
        // (one plain handle, whichever write in flight is refused first).
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL' || fh !== this.fh) throw e;
        this.plain ??= open(this.path, 'r+');
      }
    }
  }

  /** Every write in flight done (the first failure thrown after all have settled). */
  private async drain(): Promise<void> {
    const all = this.inflight.filter((w) => w !== null);
    this.inflight.fill(null);
    const settled = await Promise.allSettled(all);
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  async finish(): Promise<number> {
    const size = this.at + this.fill;
    if (this.fill > 0) {
      const padded = Math.ceil(this.fill / DIRECT_ALIGN) * DIRECT_ALIGN;
      this.stages[this.cur]!.fill(0, this.fill, padded);
      await this.submit(padded);
    }
    await this.drain();
    const fh = this.plain ? await this.plain : this.fh;
    if (size % DIRECT_ALIGN !== 0) await fh.truncate(size);
    await fh.sync();
    return size;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.drain().catch(() => undefined); // no write may land in memory handed on
    await (await this.plain?.catch(() => null))?.close().catch(() => undefined);
    await this.fh.close();
    if (spareStages.length < 2) spareStages.push(this.memory);
  }
}

class BufferedFile implements OutputFile {
  direct = false;
  private pos = 0;
  // Left to itself the kernel starts writeback only past its dirty threshold (10% of RAM), so a shard of a
  // few GB would reach the disk only in the final fsync, after all the reading and casting: flushing as we go
  // keeps the disk busy meanwhile. One flush at a time; its error is kept, as the next fsync may not see it.
  private flushing: Promise<void> | undefined;
  private flushError: unknown;
  private flushedAt = 0;
  private bounce: Buffer | null = null;

  constructor(
    private readonly fh: FileHandle,
    private readonly opts: OutputFileOptions,
  ) {}

  async put(b: Uint8Array): Promise<void> {
    for (let done = 0; done < b.length;) {
      const { bytesWritten } = await this.fh.write(b, done, b.length - done, this.pos);
      done += bytesWritten;
      this.pos += bytesWritten;
    }
    this.flushIfDue();
  }

  /**
   * A slice at a time through a small buffer, with synchronous calls: through the thread pool each 128 KiB slice
   * would cost more in round trips than its copy (the caller keeps ranges to a chunk). Reading a whole 16 MiB
   * chunk first and writing it after takes the bytes through main memory twice more (a bf16 → bf16 write 3x slower).
   */
  async putRange(fd: number, r: { file: string; offset: number; length: number; tensor: string }): Promise<void> {
    const bounce = (this.bounce ??= Buffer.allocUnsafeSlow(COPY_SLICE));
    for (let done = 0; done < r.length;) {
      const n = readSync(fd, bounce, 0, Math.min(bounce.length, r.length - done), r.offset + done);
      if (n === 0) throw rangeEnded(r);
      for (let w = 0; w < n;) w += writeSync(this.fh.fd, bounce, w, n - w, this.pos + done + w);
      done += n;
    }
    this.pos += r.length;
    this.flushIfDue();
  }

  private flushIfDue(): void {
    if (this.flushError !== undefined) throw this.flushError;
    if (this.flushing || this.pos - this.flushedAt < (this.opts.flushBytes ?? FLUSH_BYTES)) return;
    this.flushedAt = this.pos;
    if (this.opts.stats) this.opts.stats.flushes++;
    this.flushing = this.fh.datasync().then(
      () => void (this.flushing = undefined),
      (e: unknown) => void ((this.flushError = e), (this.flushing = undefined)),
    );
  }

  async finish(): Promise<number> {
    await this.flushing;
    if (this.flushError !== undefined) throw this.flushError;
    await this.fh.sync();
    return this.pos;
  }

  async close(): Promise<void> {
    await this.flushing;
    await this.fh.close();
  }
}
