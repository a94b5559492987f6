/**
 * A model's GGUF written in the same pass as its safetensors shards: the header first (every tensor's type,
 * shape and offset follow from the layout and the metadata), then each plan tensor's bytes, as the shard writer
 * produces them, encoded and written at their segment's place (GGUF order differs from shard order). What this
 * run does not produce (a shard kept from the previous folder) is filled from a segment source afterwards.
 */
import { constants } from 'node:fs';
import { copyFile, open } from 'node:fs/promises';
import { dtypeSize, openOutputFile, type ChunkPool, type OutputFile } from '../safetensors';
import type { PlanTensor } from '../plan';
import { DEFAULT_ALIGNMENT, alignUp } from './format';
import { elementBytes } from './quant';
import { TensorEncoder } from './stream';
import { encodeGgufHeader } from './writer';
import type { GgufLayout, Segment } from './architecture';
import type { GgufKv } from './types';
import type { SegmentSource } from './model';

interface Place {
  seg: Segment;
  /** GGUF tensor index, for its encoding. */
  tensor: number;
  /** Where the segment's encoded bytes start in the file, and how many there are. */
  at: number;
  bytes: number;
  /** Encoded bytes written so far (a segment is complete at `bytes`). */
  done: number;
}

/** What decides the file's header and every segment's place: equal keys, the same file. */
export function ggufPassKey(layout: GgufLayout, vocab: GgufKv[]): { header: Buffer; total: number; segments: string } {
  const { header, total } = encodeGgufHeader([...layout.metadata, ...vocab], layout.tensors);
  return { header, total, segments: JSON.stringify(layout.tensors.map((t) => t.segments.map((s) => [s.tensor.name, s.begin, s.count]))) };
}

/** Tests: fromPrevious takes a plain copy of the previous file as if it were a reflink. */
export const reflinkAsCopy = { on: false };

/** How the file is written: direct where possible (safetensors' openOutputFile), or as asked (tests). */
export type GgufPassOptions = { direct?: boolean; directMinBytes?: number };

export class GgufPass {
  private readonly places: Place[] = [];
  /** Tensors whose bytes come with the layout (no segments). */
  private readonly fixed: { at: number; data: Buffer }[] = [];
  /** Each plan tensor's segments, in element order. */
  private readonly byTensor = new Map<string, Place[]>();
  private inFlight: Promise<void> = Promise.resolve();
  private failed: unknown = undefined;

  private constructor(
    readonly file: string,
    private readonly out: OutputFile,
    private readonly layout: GgufLayout,
    readonly key: { header: Buffer; total: number; segments: string },
    private readonly pool?: ChunkPool,
  ) {
    const total = key.total;
    let offset = key.header.length;
    for (const [i, t] of layout.tensors.entries()) {
      let at = offset;
      // A tensor the converter computes (rope_freqs): its bytes are known now, written once the file is open.
      if (t.data) {
        this.fixed.push({ at, data: t.data });
        at += t.data.length;
      }
      for (const seg of t.segments) {
        const p: Place = { seg, tensor: i, at, bytes: elementBytes(t.type, seg.count), done: 0 };
        at += p.bytes;
        this.places.push(p);
        const list = this.byTensor.get(seg.tensor.name) ?? this.byTensor.set(seg.tensor.name, []).get(seg.tensor.name)!;
        list.push(p);
      }
      offset += alignUp(at - offset, DEFAULT_ALIGNMENT);
    }
    for (const list of this.byTensor.values()) list.sort((a, b) => a.seg.begin - b.seg.begin);
    if (offset !== total) throw new Error(`internal: GGUF ${file} places end at ${offset}, ${total} planned`);
  }

  get size(): number {
    return this.key.total;
  }

  /** Whether the file goes to the disk around the page cache (O_DIRECT). */
  get direct(): boolean {
    return this.out.direct;
  }

  /**
   * Creates the file at its full size (the alignment padding stays zero) with its header written. Its bytes go
   * around the page cache where the file system allows (openOutputFile): a GGUF is as large as the shards.
   */
  static async open(file: string, layout: GgufLayout, vocab: GgufKv[], pool?: ChunkPool, opts: GgufPassOptions = {}): Promise<GgufPass> {
    const key = ggufPassKey(layout, vocab);
    const out = await openOutputFile(file, { ...opts, create: 'exclusive', size: key.total, length: key.total });
    try {
      await out.putAt(0, key.header);
      const pass = new GgufPass(file, out, layout, key, pool);
      await pass.writeFixed();
      return pass;
    } catch (e) {
      await out.close();
      throw e;
    }
  }

  /**
   * The previous GGUF's bytes where this layout's header and places are the same: the `unchanged` plan tensors'
   * bytes are in place already, the rest is written over. A reflink of the whole file where the file system has
   * them (no bytes move); else a new file with only the unchanged tensors' bytes copied over, direct where
   * possible (a 6.8 GB copy through the page cache took 20 s of a prompt edit). Null (and no file made) when the
   * previous file is not of this layout.
   */
  static async fromPrevious(file: string, previous: string, layout: GgufLayout, vocab: GgufKv[], unchanged: string[], pool?: ChunkPool, opts: GgufPassOptions = {}): Promise<GgufPass | null> {
    const key = ggufPassKey(layout, vocab);
    const fh = await open(previous, 'r');
    try {
      const head = Buffer.alloc(key.header.length);
      const { bytesRead } = await fh.read(head, 0, head.length, 0);
      if ((await fh.stat()).size !== key.total || bytesRead !== head.length || !head.equals(key.header)) return null;
    } finally {
      await fh.close();
    }
    let cloned = true;
    try {
      // Tests: a plain copy stands in for the reflink that this machine's file system may not make.
      await copyFile(previous, file, constants.COPYFILE_EXCL | (reflinkAsCopy.on ? 0 : constants.COPYFILE_FICLONE_FORCE));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw e;
      cloned = false; // no reflinks here (libuv removes the file it made)
    }
    const out = cloned ? await openOutputFile(file, { ...opts, create: 'existing', size: key.total }) : await openOutputFile(file, { ...opts, create: 'exclusive', size: key.total, length: key.total });
    try {
      const pass = new GgufPass(file, out, layout, key, pool);
      const keep = new Set(unchanged);
      const kept = pass.places.filter((p) => keep.has(p.seg.tensor.name));
      if (!cloned) {
        // Places in file order (copyFrom makes neighbours on touching pages one run).
        await out.copyFrom(previous, kept.map((p) => ({ offset: p.at, length: p.bytes })));
        await out.putAt(0, key.header);
      }
      await pass.writeFixed();
      for (const p of kept) p.done = p.bytes;
      return pass;
    } catch (e) {
      await out.close().catch(() => undefined);
      throw e;
    }
  }

  private async writeFixed(): Promise<void> {
    for (const { at, data } of this.fixed) await this.out.putAt(at, data);
  }

  private encoder(p: Place, borrowed: boolean): TensorEncoder {
    const t = this.layout.tensors[p.tensor]!;
    const pool = this.pool;
    return new TensorEncoder({ type: t.type, rowLength: t.shape[0]!, permuteGroupRows: t.permuteGroupRows, borrowed, release: pool ? (b) => pool.give(b) : undefined, take: pool ? (n) => pool.take(n) : undefined });
  }

  /**
   * One write in flight; `b` goes back to the pool once written. Writes are chained, so the file's puts stay one
   * at a time (its staging is not shared between calls) whoever calls.
   */
  private async put(p: Place, b: Buffer): Promise<void> {
    if (p.done + b.length > p.bytes) throw new Error(`internal: GGUF segment of ${p.seg.tensor.name} at ${p.seg.begin}: ${p.done + b.length} bytes for ${p.bytes}`);
    if (this.failed !== undefined) throw this.failed;
    const at = p.at + p.done;
    p.done += b.length;
    const before = this.inFlight;
    this.inFlight = before
      .then(async () => {
        if (this.failed === undefined) await this.out.putAt(at, b);
        this.pool?.give(b);
      })
      .catch((e: unknown) => void (this.failed = e));
    await before;
    if (this.failed !== undefined) throw this.failed;
  }

  /**
   * A plan tensor's chunks (in its dtype), passed on unchanged after each is encoded into the GGUF: the chunk
   * stays the caller's. Producing a tensor again (a shard rewritten) writes its segments again.
   */
  async *tee(t: PlanTensor, chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
    const places = this.byTensor.get(t.name);
    if (!places) throw new Error(`internal: ${t.name} is in no GGUF tensor`);
    for (const p of places) p.done = 0;
    const size = dtypeSize(t.dtype);
    let i = 0;
    let at = 0; // elements of t seen
    let enc = this.encoder(places[0]!, true);
    for await (const chunk of chunks) {
      let off = 0;
      const n = chunk.length / size;
      while (off < n) {
        const p = places[i];
        if (!p) throw new Error(`internal: ${t.name} produced more than its ${at} elements`);
        const take = Math.min(n - off, p.seg.begin + p.seg.count - at);
        for (const b of enc.push(chunk.subarray(off * size, (off + take) * size), t.dtype)) await this.put(p, b);
        off += take;
        at += take;
        if (at === p.seg.begin + p.seg.count) {
          for (const b of enc.end()) await this.put(p, b);
          if (++i < places.length) enc = this.encoder(places[i]!, true);
        }
      }
      yield chunk;
    }
  }

  /** Segments not (fully) written in this run, from `source` (e.g. the kept shards). Returns how many. */
  async fill(source: SegmentSource): Promise<number> {
    let n = 0;
    for (const p of this.places) {
      if (p.done === p.bytes) continue;
      n++;
      p.done = 0;
      const enc = this.encoder(p, false);
      for await (const data of source(p.seg)) for (const b of enc.push(data, p.seg.tensor.dtype)) await this.put(p, b);
      for (const b of enc.end()) await this.put(p, b);
    }
    return n;
  }

  /** Whether a segment of plan tensor `name` is in this file. */
  has(name: string): boolean {
    return this.byTensor.has(name);
  }

  /** Plan tensors with a segment not complete yet. */
  missing(): string[] {
    return [...new Set(this.places.filter((p) => p.done !== p.bytes).map((p) => p.seg.tensor.name))];
  }

  /** Every segment complete: on the disk, and closed. */
  async finish(): Promise<number> {
    await this.inFlight;
    if (this.failed !== undefined) throw this.failed;
    const left = this.missing();
    if (left.length > 0) throw new Error(`internal: GGUF ${this.file}: no bytes yet for ${left.slice(0, 3).join(', ')}`);
    // On the disk before the stamp that vouches for it is written, as the shards are: a crash after the swap
    // must not leave a GGUF of the right size full of zeros that the next run keeps.
    await this.out.finish();
    await this.out.close();
    return this.key.total;
  }

  /** Stops: waits for the write in flight and closes the file (the caller removes it). */
  async abort(): Promise<void> {
    await this.inFlight;
    await this.out.close().catch(() => undefined);
  }
}

/**
 * The passes of a GGUF's files written now (a split GGUF keeps its unchanged files): a plan tensor's chunks go
 * through each file that holds a segment of it, in turn.
 */
export class GgufPassSet {
  constructor(readonly passes: GgufPass[]) {}

  tee(t: PlanTensor, chunks: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
    let out = chunks;
    for (const p of this.passes) if (p.has(t.name)) out = p.tee(t, out);
    return out;
  }

  missing(): string[] {
    return [...new Set(this.passes.flatMap((p) => p.missing()))];
  }

  async fill(source: SegmentSource): Promise<number> {
    let n = 0;
    for (const p of this.passes) n += await p.fill(source);
    return n;
  }

  async finish(): Promise<void> {
    for (const p of this.passes) await p.finish();
  }
}
