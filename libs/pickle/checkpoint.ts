import { existsSync } from 'node:fs';
import { isPlainFileName } from '../util';
import { modelJson, readInputText, stripBom } from '../input';
import { stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { TensorLocation } from '../safetensors';
import { ModelError } from '../errors';
import { entryDataOffset, fileSource, readStoredEntry, readZipDirectory, ZipError, type RangeSource } from './zip';
import { describePy, PickleError, PyGlobal, PyTuple, StorageRef, TensorRef, unpickle, STORAGE_DTYPES, type PyValue } from './unpickler';

/**
 * PyTorch `.bin` checkpoints (the zip format of torch >= 1.6) as tensor locations, the same shape the safetensors
 * reader gives: bytes are streamed straight from the zip, since torch stores each storage uncompressed.
 * For a .bin location, `begin`/`end` are absolute file offsets (the "data section" is the whole file).
 */
export type BinTensorLocation = TensorLocation;

export interface BinFileContents {
  file: string;
  tensors: BinTensorLocation[];
  /** Top-level entries that are not tensors (skipped; a weights file should have none). */
  skipped: string[];
}

function contiguousStrides(shape: number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

function isContiguous(shape: number[], stride: number[]): boolean {
  if (shape.length !== stride.length) return false;
  const want = contiguousStrides(shape);
  // Strides of size-1 (and empty) dimensions do not affect the layout.
  return shape.every((d, i) => d <= 1 || stride[i] === want[i]) || shape.some((d) => d === 0);
}

/** Reads the tensor table of one `.bin` (zip) through a ranged source: only the directory and data.pkl are read. */
export async function readBinTensors(src: RangeSource): Promise<BinFileContents> {
  const file = src.name;
  const entries = await readZipDirectory(src);
  const pklName = [...entries.keys()].find((n) => n === 'data.pkl' || /^[^/]+\/data\.pkl$/.test(n));
  if (!pklName) throw new ZipError('bin_no_pickle', 'no data.pkl in this zip: not a PyTorch checkpoint', { file });
  const prefix = pklName.slice(0, pklName.length - 'data.pkl'.length);
  const byteorder = entries.get(`${prefix}byteorder`);
  if (byteorder) {
    const order = (await readStoredEntry(src, byteorder)).toString('latin1').trim();
    if (order !== 'little') throw new PickleError('bin_big_endian', `checkpoint byte order is "${order}"; only little-endian is supported`, { file });
  }
  const pkl = await readStoredEntry(src, entries.get(pklName)!);

  const storages = new Map<string, StorageRef>();
  const root = unpickle(pkl, {
    file,
    persistentLoad(pid: PyValue): PyValue {
      const t = pid instanceof PyTuple ? pid.items : null;
      if (!t || t.length !== 5 || t[0] !== 'storage') throw new PickleError('pickle_bad', `unexpected persistent id (${describePy(pid)}); expected ('storage', type, key, location, numel)`, { file });
      const [, type, key, location, numel] = t;
      if (!(type instanceof PyGlobal) || STORAGE_DTYPES[type.name] === undefined) throw new PickleError('pickle_bad', `persistent id names ${describePy(type)} instead of a storage type`, { file });
      if (typeof key !== 'string' || typeof numel !== 'number') throw new PickleError('pickle_bad', 'persistent id key must be a string and numel an integer', { file });
      const [dtype, size] = STORAGE_DTYPES[type.name]!;
      const prior = storages.get(key);
      if (prior) {
        if (prior.dtype !== dtype) throw new PickleError('pickle_bad', `storage ${key} is used as both ${prior.dtype} and ${dtype}`, { file });
        return prior;
      }
      const ref = new StorageRef(key, dtype, size, typeof location === 'string' ? location : 'cpu', numel);
      storages.set(key, ref);
      return ref;
    },
  });

  if (!(root instanceof Map)) throw new PickleError('bin_not_state_dict', `checkpoint holds a ${describePy(root)}, expected a dict of tensors (a state_dict)`, { file });
  const dataOffsets = new Map<string, number>();
  const tensors: BinTensorLocation[] = [];
  const skipped: string[] = [];
  for (const [k, v] of root) {
    if (typeof k !== 'string') throw new PickleError('bin_not_state_dict', `state_dict key ${describePy(k)} is not a string`, { file });
    if (!(v instanceof TensorRef)) {
      skipped.push(k);
      continue;
    }
    const place = { file, tensor: k };
    if (!isContiguous(v.shape, v.stride)) {
      throw new PickleError('bin_non_contiguous', `tensor is not contiguous (shape [${v.shape.join(', ')}], stride [${v.stride.join(', ')}]); re-save it with .contiguous() or convert the checkpoint to safetensors`, place);
    }
    const st = v.storage;
    const entry = entries.get(`${prefix}data/${st.key}`);
    if (!entry) throw new PickleError('bin_missing_storage', `storage ${st.key} is missing from the zip`, place);
    if (entry.method !== 0) throw new PickleError('bin_compressed', `storage ${st.key} is compressed; it cannot be read in place`, place);
    let base = dataOffsets.get(st.key);
    if (base === undefined) {
      base = await entryDataOffset(src, entry);
      dataOffsets.set(st.key, base);
    }
    const numel = v.shape.reduce((a, b) => a * b, 1);
    const byteLength = numel * st.elementSize;
    const rel = v.storageOffset * st.elementSize;
    if (v.storageOffset < 0 || rel + byteLength > entry.size) {
      throw new PickleError('bin_out_of_bounds', `tensor spans bytes [${rel}, ${rel + byteLength}) of storage ${st.key}, which holds ${entry.size} bytes`, place);
    }
    const offset = base + rel;
    tensors.push({ name: k, dtype: st.dtype, shape: v.shape, file, offset, byteLength, begin: offset, end: offset + byteLength });
  }
  return { file, tensors, skipped };
}

export async function readBinFile(file: string): Promise<BinFileContents> {
  const src = await fileSource(file);
  try {
    return await readBinTensors(src);
  } finally {
    await src.close();
  }
}

/** The weights of a folder with `pytorch_model.bin` or shards listed by `pytorch_model.bin.index.json`. */
export class BinCheckpoint {
  private constructor(
    readonly dir: string,
    readonly files: string[],
    private readonly byName: Map<string, BinTensorLocation>,
  ) {}

  static async open(dir: string): Promise<BinCheckpoint> {
    const index = join(dir, 'pytorch_model.bin.index.json');
    const single = join(dir, 'pytorch_model.bin');
    let files: string[];
    let weightMap: Record<string, string> | null = null;
    if (existsSync(index)) {
      let idx: { weight_map?: Record<string, string> };
      const text = await readInputText(index, modelJson(basename(index)));
      try {
        idx = JSON.parse(stripBom(text));
      } catch (e) {
        throw new ModelError('bad_index', `not valid JSON (${(e as Error).message})`, { file: index });
      }
      if (!idx.weight_map || typeof idx.weight_map !== 'object') throw new ModelError('bad_index', 'expected an object "weight_map" mapping tensor names to shard files', { file: index, field: 'weight_map' });
      weightMap = idx.weight_map;
      const shards = [...new Set(Object.values(weightMap))];
      for (const s of shards) {
        if (!isPlainFileName(s)) {
          throw new ModelError('bad_index', `shard name ${JSON.stringify(s)} must be a plain file name in the model folder`, { file: index, field: 'weight_map' });
        }
      }
      files = shards.map((s) => join(dir, s));
    } else if (existsSync(single)) {
      files = [single];
    } else {
      throw new ModelError('no_weights', 'no pytorch_model.bin or pytorch_model.bin.index.json found', { file: dir });
    }
    const byName = new Map<string, BinTensorLocation>();
    for (const f of files) {
      try {
        await stat(f);
      } catch {
        throw new ModelError('missing_file', 'weight file listed for this model does not exist', { file: f });
      }
      for (const t of (await readBinFile(f)).tensors) {
        const prior = byName.get(t.name);
        if (prior) throw new ModelError('duplicate_tensor', `tensor appears in both ${basename(prior.file)} and ${basename(f)}`, { file: f, tensor: t.name });
        byName.set(t.name, t);
      }
    }
    if (weightMap) {
      for (const [tensor, shard] of Object.entries(weightMap)) {
        const loc = byName.get(tensor);
        if (!loc || basename(loc.file) !== shard) throw new ModelError('bad_index', `index maps this tensor to ${shard} but that shard does not hold it`, { file: index, tensor });
      }
    }
    return new BinCheckpoint(dir, files, byName);
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  get(name: string): BinTensorLocation {
    const loc = this.byName.get(name);
    if (!loc) throw new ModelError('missing_tensor', `tensor is missing from the .bin checkpoint in ${this.dir}`, { file: this.dir, tensor: name });
    return loc;
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  tensors(): BinTensorLocation[] {
    return [...this.byName.values()];
  }
}

export function openBinCheckpoint(dir: string): Promise<BinCheckpoint> {
  return BinCheckpoint.open(dir);
}
