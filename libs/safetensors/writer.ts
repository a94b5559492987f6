import { closeSync, openSync } from 'node:fs';
import { SafetensorsError } from '../errors';
import { jsonText } from '../json';
import type { ChunkPool } from './chunk-pool';
import { dtypeSize } from './dtype';
import { openOutputFile, type OutputFileOptions } from './output-file';

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

/** Chunks produced ahead of the one being written: two ride out a write that waits on the disk. */
const AHEAD = 2;

/**
 * Bytes of a file that go into the output as they are: the output file reads them itself, straight to where they
 * go (output-file.ts), rather than through a producer's chunk.
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

export interface WriteShardOptions extends Omit<OutputFileOptions, 'size' | 'create' | 'length'> {
  /** Where the producer's chunks come from: each is given back once written. */
  pool?: ChunkPool;
}

/**
 * Writes one shard, a tensor at a time: the header is known up front from the plan, then each tensor's
 * bytes are pulled from `produce` in chunks and appended. The next two chunks are produced (read, cast) while the
 * current one is written, across tensor boundaries too; memory is bounded by a few of the producer's chunks.
 * The file is written directly to the disk where it can be, else flushed in the background as the write goes
 * (`openOutputFile`), and fsynced at the end.
 */
export async function writeShard(path: string, tensors: OutputTensorSpec[], produce: TensorProducer, opts: WriteShardOptions = {}): Promise<number> {
  const header = encodeHeader(tensors);
  const out = await openOutputFile(path, { ...opts, size: header.length + tensors.reduce((a, t) => a + tensorBytes(t), 0) });
  // Source files of FileRange chunks, open for the whole shard (a tensor's ranges come from one file).
  const sources = new Map<string, number>();
  try {
    await out.put(header);
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
        await out.putRange(fd, chunk);
        // The copy above read synchronously; let the rest of the process run between chunks.
        await new Promise((res) => setImmediate(res));
      } else {
        await out.put(chunk);
        opts.pool?.give(chunk);
      }
    }
    return await out.finish();
  } finally {
    for (const fd of sources.values()) closeSync(fd);
    await out.close();
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
