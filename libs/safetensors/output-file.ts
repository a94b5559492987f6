import { closeSync, constants, openSync, readSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { SafetensorsError } from '../errors';
import { wasmApi } from '../wasm';

/**
 * Where a large output file's bytes go: appended in order (a shard), or put at their places in any order (a GGUF
 * written in the shards' order), then `finish` puts them on the disk.
 *
 * Direct (`O_DIRECT`, where the platform and file system take it): bytes are gathered into aligned staging
 * blocks, and each full block goes to the disk in one write straight from memory while the next fills. The kernel
 * does not copy them into the page cache first: on the VMs we measured, that copy into fresh page-cache pages took
 * most of a write's CPU (a 2.17 GB bf16 shard alone: 0.53 CPU-s direct against 1.3-2.0 buffered, in the same wall
 * time), which a first build pays while its forward pass wants both cores; and the output takes no room from the
 * source models in the page cache.
 * Pages a run of bytes covers only in part (its ends, unless aligned: a GGUF segment shares its first and last
 * pages with its neighbours and the padding) are kept in memory and written at finish through a plain handle,
 * over what the file holds there (the neighbours' bytes, or a previous file's bytes where the run is a change).
 *
 * Buffered (elsewhere: tmpfs, macOS, a file system that refuses direct writes): plain writes at their offsets,
 * flushed to the disk in the background every `flushBytes` so that the final fsync does not wait for all of them.
 */
export interface OutputFile {
  readonly direct: boolean;
  /** Appends `b` where the last put ended (taken before this resolves: the caller may reuse it after). */
  put(b: Uint8Array): Promise<void>;
  /**
   * Writes `b` at offset `at` (taken before this resolves). Calls that carry on where the last ended form one
   * run and are written as it fills; a later call over the same bytes wins. One call at a time.
   */
  putAt(at: number, b: Uint8Array): Promise<void>;
  /**
   * The bytes of file `path` in `ranges` (sorted, apart) at the same offsets of this file. Direct, whole pages move
   * (read around the page cache too): bytes beside a range on its first and last pages may come along, so put
   * the bytes that differ after the copy. A range past the end of `path` is an error naming it.
   */
  copyFrom(path: string, ranges: { offset: number; length: number }[]): Promise<void>;
  /** Appends `length` bytes of the open file `fd` from `offset` (`file` and `tensor` name them in errors). */
  putRange(fd: number, range: { file: string; offset: number; length: number; tensor: string }): Promise<void>;
  /** Every byte on the disk (fsync), the file as long as what was put (or `length`); returns the end of the last byte put. */
  finish(): Promise<number>;
  /** Closes the file (after finish, or to give up): waits for a write in flight. */
  close(): Promise<void>;
}

export interface OutputFileOptions {
  /** `truncate` (default): a new or emptied file; `exclusive`: a new file, failing where one exists; `existing`: the file as it is. */
  create?: 'truncate' | 'exclusive' | 'existing';
  /** The file's length from the open on (bytes no put covers read as zero, or keep an existing file's). */
  length?: number;
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

/** Opens `path` for writing (`create` says how), direct where the platform and its file system allow. */
export async function openOutputFile(path: string, opts: OutputFileOptions = {}): Promise<OutputFile> {
  const O_DIRECT = constants.O_DIRECT;
  const create = opts.create ?? 'truncate';
  // Made before any O_DIRECT open: Linux creates the file before it refuses O_DIRECT, and an exclusive open
  // tried again without it would then find the file.
  if (create === 'exclusive') await (await open(path, 'wx', 0o666)).close();
  const flags = create === 'truncate' ? constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC : constants.O_WRONLY;
  let out: OutputFile | null = null;
  let fh: FileHandle | null = null;
  if (opts.direct !== false && O_DIRECT !== undefined && process.platform === 'linux' && (opts.size ?? Infinity) >= (opts.directMinBytes ?? DIRECT_MIN_BYTES)) {
    try {
      if (refusedDirectOpens.left > 0 && refusedDirectOpens.left--) {
        await (await open(path, flags, 0o666)).close(); // as Linux does: the file made, then O_DIRECT refused
        throw Object.assign(new Error('EINVAL (refusedDirectOpens)'), { code: 'EINVAL' });
      }
      fh = await open(path, flags | O_DIRECT, 0o666);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e; // the file system has no direct I/O
    }
    if (fh) out = new DirectFile(path, fh);
  }
  if (!out) out = new BufferedFile((fh = await open(path, flags, 0o666)), opts);
  if (opts.length !== undefined) {
    try {
      await fh!.truncate(opts.length);
    } catch (e) {
      await out.close();
      throw e;
    }
  }
  return out;
}

/** A copied range's source file ended before the range did. */
const copyEnded = (path: string, end: number) => new SafetensorsError('truncated', `file ended before byte ${end} while copying it`, { file: path });

/** Checks `ranges` (sorted, apart, within safe integers). */
function checkRanges(ranges: { offset: number; length: number }[]): void {
  let end = 0;
  for (const r of ranges) {
    checkPlace(r.offset);
    checkPlace(r.length);
    if (r.offset < end) throw new RangeError(`copied range at ${r.offset}: ranges must be sorted and apart`);
    end = r.offset + r.length;
  }
}

/** A range's source file ended before the range did. */
const rangeEnded = (r: { file: string; length: number; tensor: string }) => new SafetensorsError('truncated', `file ended while copying ${r.length} bytes`, { file: r.file, tensor: r.tensor });

/** Tests: how many of the coming direct opens fail with EINVAL, as on a file system without direct I/O. */
export const refusedDirectOpens = { left: 0 };
/** Tests: how many of the coming direct writes fail with EINVAL, as where a file system takes O_DIRECT at open but not the writes. */
export const refusedDirectWrites = { left: 0 };
/** Tests: how many of the coming direct reads of a copied file fail with EINVAL. */
export const refusedDirectReads = { left: 0 };

/** Staging blocks per file: one fills while the others' writes are in flight (the disk wants a few at once). */
const STAGES = 4;

/** Staging memory: WebAssembly memories start page-aligned, as direct writes need; STAGES blocks each, reused. */
const spareStages: Buffer[] = [];

function takeStages(): Buffer {
  return spareStages.pop() ?? Buffer.from(new (wasmApi().Memory)({ initial: (STAGES * STAGE_BYTES) / 65536 }).buffer);
}

const alignDown = (n: number) => n - (n % DIRECT_ALIGN);
const alignUp = (n: number) => alignDown(n + DIRECT_ALIGN - 1);

function checkPlace(at: number): void {
  if (!Number.isSafeInteger(at) || at < 0) throw new RangeError(`output offset ${at}: a non-negative integer is needed`);
}

/** Part of a page that a run covered: `off` bytes into the page. */
type Piece = { off: number; data: Buffer };

class DirectFile implements OutputFile {
  direct = true;
  private readonly memory = takeStages();
  private readonly stages = Array.from({ length: STAGES }, (_, i) => this.memory.subarray(i * STAGE_BYTES, (i + 1) * STAGE_BYTES));
  /** Each stage's write in flight, if any, and the file range it writes. */
  private readonly inflight: ({ w: Promise<void>; from: number; to: number } | null)[] = new Array(STAGES).fill(null);
  private cur = 0;
  /** The current stage holds the file's bytes [lo, hi) of the current run; its first byte is the file's byte `base` (aligned). */
  private base = 0;
  private lo = 0;
  private hi = 0;
  /** The end of the last byte put. */
  private end = 0;
  /** Pages that runs covered in part, by file offset: written at finish over what the file holds. */
  private readonly edges = new Map<number, Piece[]>();
  /** Set when the file system refused a direct write after taking the open, or for the edges: a plain handle. */
  private plain: Promise<FileHandle> | null = null;
  /** Direct writes refused: the rest goes through `plain`. */
  private refused = false;
  private closed = false;

  constructor(
    private readonly path: string,
    private readonly fh: FileHandle,
  ) {}

  put(b: Uint8Array): Promise<void> {
    return this.putAt(this.hi, b);
  }

  async putAt(at: number, b: Uint8Array): Promise<void> {
    if (at !== this.hi) await this.restart(at);
    for (let off = 0; off < b.length;) {
      const n = Math.min(this.base + STAGE_BYTES - this.hi, b.length - off);
      this.stages[this.cur]!.set(b.subarray(off, off + n), this.hi - this.base);
      this.hi += n;
      off += n;
      if (this.hi - this.base === STAGE_BYTES) await this.submit();
    }
  }

  async putRange(fd: number, r: { file: string; offset: number; length: number; tensor: string }): Promise<void> {
    // Read straight into the stage: the page cache's copy is the only one the CPU makes.
    if ((await this.readIn((into, at, want, pos) => readSync(fd, into, at, want, pos), r.offset, r.length)) < r.length) throw rangeEnded(r);
  }

  /**
   * `length` bytes from position `from` of a file, read by `read` (up to `want` bytes at `pos`, into `into` at `at`)
   * straight into the current run's stages; returns how many came (fewer: the file ended).
   */
  private async readIn(read: (into: Buffer, at: number, want: number, pos: number) => number, from: number, length: number): Promise<number> {
    for (let done = 0; done < length;) {
      const want = Math.min(this.base + STAGE_BYTES - this.hi, length - done);
      const n = read(this.stages[this.cur]!, this.hi - this.base, want, from + done);
      this.hi += n;
      done += n;
      if (n < want) return done;
      if (this.hi - this.base === STAGE_BYTES) await this.submit();
    }
    return length;
  }

  async copyFrom(path: string, ranges: { offset: number; length: number }[]): Promise<void> {
    checkRanges(ranges);
    // Read direct as well: the source's pages come from the disk into the stage, with no copy by the CPU and
    // nothing added to the page cache. Whole pages, so ranges whose pages touch are one run.
    let fd = -1;
    let direct = constants.O_DIRECT !== undefined;
    try {
      if (direct) fd = openSync(path, constants.O_RDONLY | constants.O_DIRECT!);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      direct = false;
    }
    if (!direct) fd = openSync(path, 'r');
    /** A file system that took O_DIRECT at the open but refuses the read gets plain reads from then on. */
    const read = (into: Buffer, at: number, want: number, pos: number): number => {
      try {
        if (direct && refusedDirectReads.left > 0 && refusedDirectReads.left--) throw Object.assign(new Error('EINVAL (refusedDirectReads)'), { code: 'EINVAL' });
        return readSync(fd, into, at, want, pos);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL' || !direct) throw e;
        closeSync(fd);
        fd = openSync(path, 'r');
        direct = false; // the runs stay whole pages: plain reads take any offsets
        return readSync(fd, into, at, want, pos);
      }
    };
    try {
      const runs: { from: number; to: number; end: number }[] = [];
      for (const r of ranges) {
        if (r.length === 0) continue;
        const end = r.offset + r.length;
        const from = direct ? alignDown(r.offset) : r.offset;
        const to = direct ? alignUp(end) : end;
        const last = runs[runs.length - 1];
        if (last && from <= last.to) (last.to = Math.max(last.to, to)), (last.end = end);
        else runs.push({ from, to, end });
      }
      for (const run of runs) {
        await this.restart(run.from);
        // Short of the run's last page is fine past the range's last byte (the file ends on that page).
        if (run.from + (await this.readIn(read, run.from, run.to - run.from)) < run.end) throw copyEnded(path, run.end);
      }
    } finally {
      closeSync(fd);
    }
  }

  /** A new run at `at`: the current one goes first. */
  private async restart(at: number): Promise<void> {
    checkPlace(at);
    if (this.hi > this.lo) await this.submit();
    this.base = alignDown(at);
    this.lo = this.hi = at;
  }

  /**
   * The current run's bytes in this stage: its whole pages to the disk from the stage, its partial pages kept
   * (edges); then the next stage, once its own write is done (its memory is filled next).
   */
  private async submit(): Promise<void> {
    const { base, lo, hi } = this;
    const stage = this.stages[this.cur]!;
    const from = alignUp(lo);
    const to = alignDown(hi);
    if (to > from) {
      // An earlier write of these pages still in flight (bytes put again) must land first.
      for (const f of this.inflight) if (f && f.from < to && from < f.to) await f.w;
      // Whole pages written now are newer than any part of them kept before.
      if (this.edges.size > 0) for (let p = from; p < to; p += DIRECT_ALIGN) this.edges.delete(p);
      const w = this.writeAt(stage.subarray(from - base, to - base), from);
      w.catch(() => undefined); // awaited before the stage is filled again, or by finish or close: never unhandled meanwhile
      this.inflight[this.cur] = { w, from, to };
      this.keep(lo, stage.subarray(lo - base, from - base));
      this.keep(to, stage.subarray(to - base, hi - base));
    } else this.keep(lo, stage.subarray(lo - base, hi - base));
    this.end = Math.max(this.end, hi);
    this.cur = (this.cur + 1) % STAGES;
    this.base = this.lo = this.hi = hi;
    const next = this.inflight[this.cur];
    this.inflight[this.cur] = null;
    await next?.w;
  }

  /** Bytes at file offset `at` that cover their pages only in part, copied out, by page. */
  private keep(at: number, bytes: Uint8Array): void {
    for (let off = 0; off < bytes.length;) {
      const page = alignDown(at + off);
      const n = Math.min(page + DIRECT_ALIGN - (at + off), bytes.length - off);
      const pieces = this.edges.get(page) ?? this.edges.set(page, []).get(page)!;
      pieces.push({ off: at + off - page, data: Buffer.from(bytes.subarray(off, off + n)) });
      off += n;
    }
  }

  private async writeAt(b: Buffer, at: number): Promise<void> {
    for (let done = 0; done < b.length;) {
      const fh = this.refused ? await this.plain! : this.fh;
      try {
        if (!this.refused && refusedDirectWrites.left > 0 && refusedDirectWrites.left--) throw Object.assign(new Error('EINVAL (refusedDirectWrites)'), { code: 'EINVAL' });
        done += (await fh.write(b, done, b.length - done, at + done)).bytesWritten;
      } catch (e) {
        // Open took O_DIRECT but the write did not (an alignment this file system wants larger): plain from here
        // (one plain handle, whichever write in flight is refused first).
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL' || fh !== this.fh) throw e;
        this.refused = true;
        this.plainHandle();
      }
    }
  }

  private plainHandle(): Promise<FileHandle> {
    return (this.plain ??= open(this.path, 'r+'));
  }

  /** Every write in flight done (the first failure thrown after all have settled). */
  private async drain(): Promise<void> {
    const all = this.inflight.filter((f) => f !== null).map((f) => f.w);
    this.inflight.fill(null);
    const settled = await Promise.allSettled(all);
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  /**
   * The pages runs covered in part, through the plain handle (a few KiB each: the page cache is cheaper for them
   * than staging): each read as the file holds it (a neighbour's bytes, a previous file's, zeros past the end),
   * its pieces put over it in the order they came.
   */
  private async writeEdges(): Promise<void> {
    const fh = await this.plainHandle();
    const page = Buffer.alloc(DIRECT_ALIGN);
    for (const at of [...this.edges.keys()].sort((a, b) => a - b)) {
      page.fill(0);
      let len = (await fh.read(page, 0, DIRECT_ALIGN, at)).bytesRead;
      for (const { off, data } of this.edges.get(at)!) {
        data.copy(page, off);
        len = Math.max(len, off + data.length);
      }
      for (let done = 0; done < len;) done += (await fh.write(page, done, len - done, at + done)).bytesWritten;
    }
    this.edges.clear();
  }

  async finish(): Promise<number> {
    if (this.hi > this.lo) await this.submit();
    await this.drain();
    if (this.edges.size > 0) await this.writeEdges();
    // fsync is per file: it covers the plain handle's writes too.
    await this.fh.sync();
    return this.end;
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
  private end = 0;
  // Left to itself the kernel starts writeback only past its dirty threshold (10% of RAM), so a shard of a
  // few GB would reach the disk only in the final fsync, after all the reading and casting: flushing as we go
  // keeps the disk busy meanwhile. One flush at a time; its error is kept, as the next fsync may not see it.
  private flushing: Promise<void> | undefined;
  private flushError: unknown;
  /** Bytes written since the last flush began. */
  private unflushed = 0;
  private bounce: Buffer | null = null;

  constructor(
    private readonly fh: FileHandle,
    private readonly opts: OutputFileOptions,
  ) {}

  put(b: Uint8Array): Promise<void> {
    return this.putAt(this.pos, b);
  }

  async putAt(at: number, b: Uint8Array): Promise<void> {
    checkPlace(at);
    for (let done = 0; done < b.length;) done += (await this.fh.write(b, done, b.length - done, at + done)).bytesWritten;
    this.wrote(at + b.length, b.length);
  }

  async copyFrom(path: string, ranges: { offset: number; length: number }[]): Promise<void> {
    checkRanges(ranges);
    const fd = openSync(path, 'r');
    try {
      for (const r of ranges) {
        this.pos = r.offset;
        this.copySlices(fd, r.offset, r.length, () => copyEnded(path, r.offset + r.length));
      }
    } finally {
      closeSync(fd);
    }
  }

  /**
   * A slice at a time through a small buffer, with synchronous calls: through the thread pool each 128 KiB slice
   * would cost more in round trips than its copy (the caller keeps ranges to a chunk). Reading a whole 16 MiB
   * chunk first and writing it after takes the bytes through main memory twice more (a bf16 → bf16 write 3x slower).
   */
  async putRange(fd: number, r: { file: string; offset: number; length: number; tensor: string }): Promise<void> {
    this.copySlices(fd, r.offset, r.length, () => rangeEnded(r));
  }

  /** `length` bytes of `fd` from `offset`, at the current position. */
  private copySlices(fd: number, offset: number, length: number, ended: () => Error): void {
    const bounce = (this.bounce ??= Buffer.allocUnsafeSlow(COPY_SLICE));
    for (let done = 0; done < length;) {
      const n = readSync(fd, bounce, 0, Math.min(bounce.length, length - done), offset + done);
      if (n === 0) throw ended();
      for (let w = 0; w < n;) w += writeSync(this.fh.fd, bounce, w, n - w, this.pos + done + w);
      done += n;
    }
    this.wrote(this.pos + length, length);
  }

  private wrote(to: number, n: number): void {
    this.pos = to;
    this.end = Math.max(this.end, to);
    this.unflushed += n;
    if (this.flushError !== undefined) throw this.flushError;
    if (this.flushing || this.unflushed < (this.opts.flushBytes ?? FLUSH_BYTES)) return;
    this.unflushed = 0;
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
    return this.end;
  }

  async close(): Promise<void> {
    await this.flushing;
    await this.fh.close();
  }
}
