import { open, stat, type FileHandle } from 'node:fs/promises';
import { isPlainFileName } from '../util';
import { modelJson, readInputText, stripBom } from '../input';
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { join, basename } from 'node:path';
import { SafetensorsError } from '../errors';
import type { ChunkPool } from './chunk-pool';
import { decodeFloats } from './dtype';
import { headerLengthFrom, parseHeader, type SafetensorsHeader, type TensorInfo } from './header';

/** One tensor of one file, located on disk: everything needed to stream its bytes later. */
export interface TensorLocation extends TensorInfo {
  file: string;
  /** Absolute offset of the first byte in `file`. */
  offset: number;
  byteLength: number;
}

export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const fh = await open(file, 'r');
  try {
    const { size } = await fh.stat();
    const prefix = Buffer.alloc(8);
    await fh.read(prefix, 0, Math.min(8, size), 0);
    const len = headerLengthFrom(prefix.subarray(0, Math.min(8, size)), size, file);
    const json = Buffer.alloc(len);
    await fh.read(json, 0, len, 8);
    return parseHeader(json, len, size, file);
  } finally {
    await fh.close();
  }
}

export function locate(file: string, header: SafetensorsHeader, info: TensorInfo): TensorLocation {
  return { ...info, file, offset: header.dataStart + info.begin, byteLength: info.end - info.begin };
}

/** Where a model's tensors are: a safetensors folder, or a PyTorch .bin checkpoint read without unpickling code. */
export interface TensorIndex {
  readonly dir: string;
  has(name: string): boolean;
  get(name: string): TensorLocation;
}

/** Reads one tensor's bytes into the start of `into` (at least its byteLength long). */
export async function readTensorInto(loc: TensorLocation, into: Uint8Array): Promise<void> {
  const fh = await open(loc.file, 'r');
  try {
    await readTensorFrom(fh, loc, into);
  } finally {
    await fh.close();
  }
}

/** readTensorInto through a handle of `loc.file` the caller holds open. */
export async function readTensorFrom(fh: FileHandle, loc: TensorLocation, into: Uint8Array): Promise<void> {
  let done = 0;
  while (done < loc.byteLength) {
    const { bytesRead } = await fh.read(into, done, loc.byteLength - done, loc.offset + done);
    if (bytesRead === 0) throw new SafetensorsError('truncated', `file ended while reading ${loc.byteLength} bytes`, { file: loc.file, tensor: loc.name });
    done += bytesRead;
  }
}

/** Reads one tensor's bytes. */
export async function readTensorBytes(loc: TensorLocation): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(loc.byteLength);
  await readTensorInto(loc, buf);
  return buf;
}

/**
 * Reads rows of a 2-D float tensor (an embedding table) decoded to float32, each distinct row once: only
 * the rows asked for are read, never the whole table.
 */
export async function readRows(loc: TensorLocation, ids: Iterable<number>): Promise<Map<number, Float32Array>> {
  const V = loc.shape[0] ?? 0;
  const rowBytes = V > 0 ? loc.byteLength / V : 0;
  const rows = new Map<number, Float32Array>();
  // Read synchronously: a few KiB per row, most often from the OS's cache. Each asynchronous read queued behind
  // whatever fills libuv's pool (a layer's reads) and behind the callbacks that widen them: a 70-token prompt's
  // rows took 230-390 ms that way in a forward worker, before its first layer could run.
  const fd = openSync(loc.file, 'r');
  try {
    for (const id of ids) {
      if (rows.has(id)) continue;
      if (!Number.isInteger(id) || id < 0 || id >= V) {
        throw new SafetensorsError('bad_row', `token id ${id} is outside the embedding table (0..${V - 1})`, { file: loc.file, tensor: loc.name });
      }
      const buf = Buffer.allocUnsafe(rowBytes);
      const bytesRead = readSync(fd, buf, 0, rowBytes, loc.offset + id * rowBytes);
      if (bytesRead !== rowBytes) throw new SafetensorsError('truncated', `file ended while reading row ${id}`, { file: loc.file, tensor: loc.name });
      rows.set(id, decodeFloats(buf, loc.dtype));
    }
  } finally {
    closeSync(fd);
  }
  return rows;
}

/**
 * Streams a tensor in chunks of at most `chunk` bytes (a multiple of `align`), reading the next chunk while
 * the consumer works on this one. With a pool, each chunk is a buffer taken from it and handed to the
 * consumer, who gives it back once done with it.
 */
export async function* streamTensorBytes(loc: TensorLocation, chunk = 16 << 20, align = 8, pool?: ChunkPool): AsyncGenerator<Buffer> {
  const size = Math.max(align, chunk - (chunk % align));
  const fh = await open(loc.file, 'r');
  const readAt = async (pos: number): Promise<Buffer> => {
    const n = Math.min(size, loc.byteLength - pos);
    const buf = pool ? pool.take(n) : Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const { bytesRead } = await fh.read(buf, done, n - done, loc.offset + pos + done);
      if (bytesRead === 0) throw new SafetensorsError('truncated', 'file ended while streaming tensor', { file: loc.file, tensor: loc.name });
      done += bytesRead;
    }
    return buf;
  };
  let next: Promise<Buffer> | null = loc.byteLength > 0 ? readAt(0) : null;
  try {
    let pos = 0;
    while (next) {
      const buf = await next;
      pos += buf.length;
      next = pos < loc.byteLength ? readAt(pos) : null;
      next?.catch(() => undefined); // awaited next round, or dropped if the consumer stops early
      yield buf;
    }
  } finally {
    await next?.catch(() => undefined);
    await fh.close();
  }
}

/**
 * The weights of one model folder: a single `model.safetensors` or shards listed by
 * `model.safetensors.index.json`. Headers are read once; tensor data only on demand.
 */
export class SafetensorsWeights {
  private constructor(
    readonly dir: string,
    readonly files: string[],
    private readonly byName: Map<string, TensorLocation>,
  ) {}

  static async openFolder(dir: string): Promise<SafetensorsWeights> {
    const single = join(dir, 'model.safetensors');
    const index = join(dir, 'model.safetensors.index.json');
    if (existsSync(index)) return SafetensorsWeights.openIndex(dir, index);
    if (existsSync(single)) return SafetensorsWeights.openFiles(dir, [single]);
    throw new SafetensorsError('no_weights', 'no model.safetensors or model.safetensors.index.json found', { file: dir });
  }

  static async openIndex(dir: string, indexFile: string): Promise<SafetensorsWeights> {
    let idx: { weight_map?: Record<string, string> };
    const text = await readInputText(indexFile, modelJson(basename(indexFile)));
    try {
      idx = JSON.parse(stripBom(text));
    } catch (e) {
      throw new SafetensorsError('bad_index', `not valid JSON (${(e as Error).message})`, { file: indexFile });
    }
    if (!idx.weight_map || typeof idx.weight_map !== 'object') {
      throw new SafetensorsError('bad_index', 'expected an object "weight_map" mapping tensor names to shard files', { file: indexFile, field: 'weight_map' });
    }
    const shardNames = [...new Set(Object.values(idx.weight_map))];
    for (const s of shardNames) {
      if (!isPlainFileName(s)) {
        throw new SafetensorsError('bad_index', `shard name ${JSON.stringify(s)} must be a plain file name in the model folder`, { file: indexFile, field: 'weight_map' });
      }
    }
    const weights = await SafetensorsWeights.openFiles(dir, shardNames.map((s) => join(dir, s)));
    for (const [tensor, shard] of Object.entries(idx.weight_map)) {
      const loc = weights.byName.get(tensor);
      if (!loc || basename(loc.file) !== shard) {
        throw new SafetensorsError('bad_index', `index maps this tensor to ${shard} but that shard does not hold it`, { file: indexFile, tensor });
      }
    }
    return weights;
  }

  static async openFiles(dir: string, files: string[]): Promise<SafetensorsWeights> {
    const byName = new Map<string, TensorLocation>();
    for (const file of files) {
      try {
        await stat(file);
      } catch {
        throw new SafetensorsError('missing_file', 'weight file listed for this model does not exist', { file });
      }
      const header = await readSafetensorsHeader(file);
      for (const info of header.tensors.values()) {
        const prior = byName.get(info.name);
        if (prior) throw new SafetensorsError('duplicate_tensor', `tensor appears in both ${basename(prior.file)} and ${basename(file)}`, { file, tensor: info.name });
        byName.set(info.name, locate(file, header, info));
      }
    }
    return new SafetensorsWeights(dir, files, byName);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  get(name: string): TensorLocation {
    const loc = this.byName.get(name);
    if (!loc) {
      throw new SafetensorsError('missing_tensor', `tensor is missing from ${this.files.length === 1 ? this.files[0] : `the shards of ${this.dir}`}`, { file: this.files.length === 1 ? this.files[0] : this.dir, tensor: name });
    }
    return loc;
  }

  names(): string[] {
    return [...this.byName.keys()];
  }
}
