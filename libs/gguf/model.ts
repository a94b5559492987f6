/** A model's GGUF file from its layout and a source of each segment's bytes. */
import { streamTensorBytes, type TensorIndex } from '../safetensors';
import { dtypeSize } from '../safetensors';
import type { ChunkPool } from '../safetensors';
import type { PlanTensor } from '../plan';
import { encodeTensor, type SourceChunk } from './stream';
import { writeGguf } from './writer';
import type { GgufLayout, Segment } from './architecture';
import type { GgufKv } from './types';

/** A segment's bytes in its tensor's dtype, chunk by chunk. */
export type SegmentSource = (seg: Segment) => AsyncIterable<Buffer>;

const CHUNK = 16 << 20;

/** Segments read from written safetensors shards (what the converter reads). */
export function shardSource(weights: TensorIndex, pool?: ChunkPool): SegmentSource {
  return (seg) => {
    const loc = weights.get(seg.tensor.name);
    const size = dtypeSize(loc.dtype);
    if (loc.dtype !== seg.tensor.dtype) throw new Error(`internal: ${seg.tensor.name} is ${loc.dtype} in its shard, ${seg.tensor.dtype} planned`);
    const part = { ...loc, offset: loc.offset + seg.begin * size, byteLength: seg.count * size };
    return streamTensorBytes(part, Math.floor(CHUNK / size) * size, size, pool);
  };
}

/**
 * Segments made by a tensor producer (when no shard holds them): a segment is a run of whole plan parts,
 * produced as a tensor of those parts alone.
 */
export function producerSource(produce: (t: PlanTensor) => AsyncIterable<Buffer>): SegmentSource {
  return (seg) => {
    const t = seg.tensor;
    if (seg.begin === 0 && seg.count === t.shape.reduce((a, b) => a * b, 1)) return produce(t);
    let at = 0;
    const parts = [];
    for (const p of t.parts) {
      const n = p.kind === 'source' ? p.shape.reduce((a, b) => a * b, 1) : p.kind === 'zeros' ? p.elements : p.rows.length * t.shape[t.shape.length - 1]!;
      if (at >= seg.begin && at + n <= seg.begin + seg.count) parts.push(p);
      else if (at < seg.begin + seg.count && at + n > seg.begin) throw new Error(`internal: segment of ${t.name} cuts a part`);
      at += n;
    }
    return produce({ ...t, parts });
  };
}

export interface WriteModelGgufOptions {
  pool?: ChunkPool;
  onBytes?: (n: number) => void;
  /** As safetensors' openOutputFile takes them (tests: force or refuse direct writes). */
  direct?: boolean;
  directMinBytes?: number;
}

export async function writeModelGguf(file: string, layout: GgufLayout, vocab: GgufKv[], source: SegmentSource, opts: WriteModelGgufOptions = {}): Promise<number> {
  const tensors = layout.tensors.map((t) => ({
    name: t.name,
    shape: t.shape,
    type: t.type,
    bytes: () => {
      if (t.data) {
        const data = t.data;
        return (async function* () {
          yield Buffer.from(data);
        })();
      }
      async function* chunks(): AsyncGenerator<SourceChunk> {
        for (const seg of t.segments) for await (const data of source(seg)) yield { data, dtype: seg.tensor.dtype };
      }
      const pool = opts.pool;
      return encodeTensor(chunks(), { type: t.type, rowLength: t.shape[0]!, permuteGroupRows: t.permuteGroupRows, release: pool ? (b) => pool.give(b) : undefined, take: pool ? (n) => pool.take(n) : undefined });
    },
  }));
  const pool = opts.pool;
  return writeGguf(file, [...layout.metadata, ...vocab], tensors, { onBytes: opts.onBytes, release: pool ? (b) => pool.give(b) : undefined, direct: opts.direct, directMinBytes: opts.directMinBytes });
}
