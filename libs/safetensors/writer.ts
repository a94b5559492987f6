import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { SafetensorsError } from '../errors';
import { jsonText } from '../json';
import type { ChunkPool } from './chunk-pool';
import { dtypeSize } from './dtype';

export interface OutputTensorSpec {
  name: string;
  dtype: string;
  shape: number[];
  /** Tensors of one group change together; the grouped order gives each group shards of its own. */
  group?: string;
}

export interface ShardPlan {
  /** Final file name once all shards are known (model.safetensors or model-0000i-of-0000N.safetensors). */
  file: string;
  tensors: OutputTensorSpec[];
  bytes: number;
}

export function tensorBytes(t: OutputTensorSpec): number {
  return t.shape.reduce((a, b) => a * b, 1) * dtypeSize(t.dtype);
}

/**
 * Shard split. 'reference': the reference's rule, tensors in write order; before adding one, flush if the shard
 * is non-empty and would exceed `maxShardBytes` (so an oversized tensor gets a shard of its own).
 * 'grouped': the same rule per group, each group starting a new shard: the routers first, then the base's
 * tensors, then each other group in order of first appearance, so an edit rewrites only the shards of the
 * groups it changes. One shard is named model.safetensors, several model-0000i-of-0000N.safetensors.
 */
export function planShards(tensors: OutputTensorSpec[], maxShardBytes: number, order: 'grouped' | 'reference' = 'reference'): ShardPlan[] {
  const groups: { tensors: OutputTensorSpec[]; bytes: number }[] = [];
  let cur: { tensors: OutputTensorSpec[]; bytes: number } = { tensors: [], bytes: 0 };
  const flush = () => {
    if (cur.tensors.length > 0) groups.push(cur);
    cur = { tensors: [], bytes: 0 };
  };
  const ordered = order === 'grouped' ? groupedOrder(tensors) : [tensors];
  for (const run of ordered) {
    flush();
    for (const t of run) {
      const b = tensorBytes(t);
      if (cur.tensors.length > 0 && maxShardBytes > 0 && cur.bytes + b > maxShardBytes) flush();
      cur.tensors.push(t);
      cur.bytes += b;
    }
  }
  if (cur.tensors.length > 0 || groups.length === 0) groups.push(cur);
  const n = groups.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  return groups.map((g, i) => ({ ...g, file: n === 1 ? 'model.safetensors' : `model-${pad(i + 1)}-of-${pad(n)}.safetensors` }));
}

/** Tensors by group (write order kept inside each): 'router', 'base', then the rest as they first appear. */
function groupedOrder(tensors: OutputTensorSpec[]): OutputTensorSpec[][] {
  const byGroup = new Map<string, OutputTensorSpec[]>([['router', []], ['base', []]]);
  for (const t of tensors) {
    const g = t.group ?? 'base';
    let list = byGroup.get(g);
    if (!list) byGroup.set(g, (list = []));
    list.push(t);
  }
  return [...byGroup.values()].filter((l) => l.length > 0);
}

/** Header bytes (length prefix + JSON padded with spaces to a multiple of 8). */
export function encodeHeader(tensors: OutputTensorSpec[], metadata: Record<string, string> = { format: 'pt' }): Buffer {
  const obj: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const n = tensorBytes(t);
    obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + n] };
    offset += n;
  }
  let json = Buffer.from(JSON.stringify(obj), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) json = Buffer.concat([json, Buffer.alloc(padded - json.length, 0x20)]);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([prefix, json]);
}

/** Bytes written between two background flushes of a shard. */
const FLUSH_BYTES = 64 << 20;
/** Chunks produced ahead of the one being written: two ride out a write that waits on a flush. */
const AHEAD = 2;

/** Bytes copied through a buffer this small stay in the CPU's cache between the read and the write. */
const COPY_SLICE = 128 << 10;

/**
 * Bytes of a file that go into the output as they are. The writer copies them itself, a small slice read and
 * written at a time: reading a whole 16 MiB chunk first and writing it after takes the bytes through main memory
 * twice more, which made a bf16 → bf16 write 3x slower than a plain copy.
 */
export class FileRange {
  constructor(
    readonly file: string,
    readonly offset: number,
    /** Bytes, as a chunk's length. */
    readonly length: number,
    /** For the error when the file ends early. */
    readonly tensor: string,
  ) {}
}

/** What a producer yields: bytes made, or bytes of a source file to copy unchanged. */
export type TensorChunk = Buffer | FileRange;

/**
 * A tensor's bytes in chunks. A chunk taken from the pool passed to writeShard is handed to the writer, which
 * gives it back once written (so a producer must not yield two views of one pool buffer).
 */
export type TensorProducer = (t: OutputTensorSpec) => AsyncIterable<TensorChunk> | Iterable<TensorChunk>;

export interface WriteShardOptions {
  /** Where the producer's chunks come from: each is given back once written. */
  pool?: ChunkPool;
  /** Bytes written between two background flushes (default 64 MiB). */
  flushBytes?: number;
  /** Filled in as the write goes (for tests and debug output). */
  stats?: { flushes: number };
}

/**
 * Writes one shard, a tensor at a time: the header is known up front from the plan, then each tensor's
 * bytes are pulled from `produce` in chunks and appended. The next two chunks are produced (read, cast) while the
 * current one is written, across tensor boundaries too; memory is bounded by a few of the producer's chunks.
 * Written data is flushed to the disk in the background as the write goes, and fsynced at the end.
 */
export async function writeShard(path: string, tensors: OutputTensorSpec[], produce: TensorProducer, opts: WriteShardOptions = {}): Promise<number> {
  const flushBytes = opts.flushBytes ?? FLUSH_BYTES;
  const fh = await open(path, 'w');
  // Left to itself the kernel starts writeback only past its dirty threshold (10% of RAM), so a shard of a
  // few GB would reach the disk only in the final fsync, after all the reading and casting: flushing as we go
  // keeps the disk busy meanwhile. One flush at a time; its error is kept, as the next fsync may not see it.
  let flushing: Promise<void> | undefined;
  let flushError: unknown;
  let flushedAt = 0;
  // Source files of FileRange chunks, open for the whole shard (a tensor's ranges come from one file).
  const sources = new Map<string, number>();
  const bounce = Buffer.allocUnsafeSlow(COPY_SLICE);
  try {
    const header = encodeHeader(tensors);
    await fh.write(header, 0, header.length, 0);
    let pos = header.length;
    const it = checkedChunks(path, tensors, produce)[Symbol.asyncIterator]();
    const pending: Promise<IteratorResult<TensorChunk>>[] = [];
    const ask = () => {
      const p = it.next();
      p.catch(() => undefined); // awaited in a later round; a failure during this write must not go unhandled
      pending.push(p);
    };
    for (let i = 0; i < AHEAD; i++) ask();
    for (;;) {
      const r = await pending.shift()!;
      if (r.done) break;
      ask();
      const chunk = r.value;
      if (chunk instanceof FileRange) {
        let fd = sources.get(chunk.file);
        if (fd === undefined) sources.set(chunk.file, (fd = openSync(chunk.file, 'r')));
        copyRange(fd, fh.fd, chunk, pos, bounce);
        pos += chunk.length;
        // The copy above blocked this thread for one chunk; let the rest of the process run between chunks.
        await new Promise((res) => setImmediate(res));
      } else {
        let done = 0;
        while (done < chunk.length) {
          const { bytesWritten } = await fh.write(chunk, done, chunk.length - done, pos);
          done += bytesWritten;
          pos += bytesWritten;
        }
        opts.pool?.give(chunk);
      }
      if (flushError !== undefined) throw flushError;
      if (!flushing && pos - flushedAt >= flushBytes) {
        flushedAt = pos;
        if (opts.stats) opts.stats.flushes++;
        flushing = fh.datasync().then(
          () => void (flushing = undefined),
          (e: unknown) => void ((flushError = e), (flushing = undefined)),
        );
      }
    }
    await flushing;
    if (flushError !== undefined) throw flushError;
    await fh.sync();
    return pos;
  } finally {
    await flushing;
    for (const fd of sources.values()) closeSync(fd);
    await fh.close();
  }
}

/**
 * `range` copied to `out` at `at`, a slice at a time through `bounce`, with synchronous calls: through the
 * thread pool each 128 KiB slice would cost more in round trips than its copy (the caller keeps ranges to a chunk).
 */
function copyRange(src: number, out: number, range: FileRange, at: number, bounce: Buffer): void {
  for (let done = 0; done < range.length;) {
    const n = readSync(src, bounce, 0, Math.min(bounce.length, range.length - done), range.offset + done);
    if (n === 0) throw new SafetensorsError('truncated', `file ended while copying ${range.length} bytes`, { file: range.file, tensor: range.tensor });
    for (let w = 0; w < n;) w += writeSync(out, bounce, w, n - w, at + done + w);
    done += n;
  }
}

/** Every tensor's chunks in order, each tensor checked to produce exactly its planned byte count. */
async function* checkedChunks(path: string, tensors: OutputTensorSpec[], produce: TensorProducer): AsyncGenerator<TensorChunk> {
  for (const t of tensors) {
    const expected = tensorBytes(t);
    let got = 0;
    for await (const chunk of produce(t)) {
      got += chunk.length;
      if (got > expected) break;
      if (chunk.length > 0) yield chunk;
    }
    if (got !== expected) {
      throw new SafetensorsError('size_mismatch', `produced ${got} bytes, expected ${expected} for ${t.dtype} [${t.shape.join(', ')}]`, { file: path, tensor: t.name });
    }
  }
}

export function indexJson(shards: ShardPlan[]): string {
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const s of shards) {
    for (const t of s.tensors) {
      weightMap[t.name] = s.file;
      total += tensorBytes(t);
    }
  }
  return jsonText({ metadata: { total_size: total }, weight_map: weightMap });
}
