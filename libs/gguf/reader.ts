import { open, type FileHandle } from 'node:fs/promises';
import { ForgeError } from '../errors';
import { DEFAULT_ALIGNMENT, GGUF_MAGIC, SCALAR_SIZES, TENSOR_TYPE_NAMES, VALUE_NAMES, tensorBytes, alignUp } from './format';
import type { GgufScalar, GgufScalarType, GgufValue } from './types';

export interface GgufTensorInfo {
  name: string;
  /** GGUF order: ne0 (the fastest-varying dimension) first. */
  shape: number[];
  type: string;
  /** Absolute offset in the file. */
  offset: number;
  bytes: number;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  dataOffset: number;
  alignment: number;
}

/** Reads the header only; tensor data is read on demand by offset (readTensorData). */
class Cursor {
  private buf = Buffer.alloc(0);
  private base = 0; // file offset of buf[0]
  pos = 0;
  constructor(private fh: FileHandle, readonly size: number, private fail: (why: string) => never) {}
  private async need(n: number): Promise<void> {
    if (this.pos + n > this.size) this.fail(`ends inside its header (at byte ${this.pos}, ${n} more bytes expected)`);
    if (this.pos + n <= this.base + this.buf.length) return;
    const want = Math.min(Math.max(n, 1 << 20), this.size - this.pos);
    const b = Buffer.alloc(want);
    const { bytesRead } = await this.fh.read(b, 0, want, this.pos);
    if (bytesRead < n) this.fail(`ends inside its header (at byte ${this.pos})`);
    this.buf = b.subarray(0, bytesRead);
    this.base = this.pos;
  }
  private async view(n: number): Promise<Buffer> {
    await this.need(n);
    const at = this.pos - this.base;
    this.pos += n;
    return this.buf.subarray(at, at + n);
  }
  async u32() { return (await this.view(4)).readUInt32LE(0); }
  async u64(what: string): Promise<number> {
    const v = (await this.view(8)).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${what} ${v} is out of range`);
    return Number(v);
  }
  async string(what: string): Promise<string> {
    const n = await this.u64(`length of ${what}`);
    if (n > this.size - this.pos) this.fail(`${what} is ${n} bytes long, beyond the end of the file`);
    const b = await this.view(n);
    const s = b.toString('utf8');
    if (!Buffer.from(s, 'utf8').equals(b)) this.fail(`${what} is not valid UTF-8`);
    return s;
  }
  async scalar(type: GgufScalarType, what: string): Promise<GgufScalar> {
    if (type === 'string') return this.string(what);
    const size = SCALAR_SIZES[type]!;
    const b = await this.view(size);
    switch (type) {
      case 'u8': return b.readUInt8(0);
      case 'i8': return b.readInt8(0);
      case 'u16': return b.readUInt16LE(0);
      case 'i16': return b.readInt16LE(0);
      case 'u32': return b.readUInt32LE(0);
      case 'i32': return b.readInt32LE(0);
      case 'f32': return b.readFloatLE(0);
      case 'f64': return b.readDoubleLE(0);
      case 'u64': return b.readBigUInt64LE(0);
      case 'i64': return b.readBigInt64LE(0);
      case 'bool': {
        const v = b.readUInt8(0);
        if (v > 1) this.fail(`${what} is a bool holding ${v}`);
        return v === 1;
      }
    }
    return this.fail(`unknown value type ${type}`);
  }
}

/**
 * A GGUF file's header (metadata and tensor table), validated: a damaged, truncated or inconsistent file is
 * refused in one line naming it. Tensor data stays on disk.
 */
export async function readGguf(file: string): Promise<GgufFile> {
  const fail = (why: string): never => {
    throw new ForgeError('bad_gguf', `not a valid GGUF file: ${why}`, { file });
  };
  const fh = await open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const c = new Cursor(fh, size, fail);
    if (size < 24) fail(`${size} bytes, shorter than a GGUF header`);
    if ((await c.u32()) !== GGUF_MAGIC) fail('it does not start with the GGUF magic');
    const version = await c.u32();
    if (version !== 2 && version !== 3) fail(`version ${version} (2 or 3 expected)`);
    const nTensors = await c.u64('tensor count');
    const nKv = await c.u64('metadata count');
    // Each entry takes at least 8 bytes (a length): counts beyond that cannot be real.
    if (nTensors > size / 8 || nKv > size / 8) fail(`counts ${nTensors} tensors / ${nKv} keys do not fit in ${size} bytes`);
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < nKv; i++) {
      const key = await c.string(`key ${i}`);
      if (metadata.has(key)) fail(`key ${key} appears twice`);
      const code = await c.u32();
      const type = VALUE_NAMES.get(code);
      if (!type) return fail(`key ${key} has unknown value type ${code}`);
      if (type === 'array') {
        const ic = await c.u32();
        const itemType = VALUE_NAMES.get(ic);
        if (!itemType || itemType === 'array') fail(`key ${key} is an array of unsupported type ${ic}`);
        const n = await c.u64(`length of ${key}`);
        const min = itemType === 'string' ? 8 : SCALAR_SIZES[itemType as GgufScalarType]!;
        if (n * min > size - c.pos) fail(`key ${key} holds ${n} items, beyond the end of the file`);
        const value: GgufScalar[] = new Array(n);
        for (let j = 0; j < n; j++) value[j] = await c.scalar(itemType as GgufScalarType, `${key}[${j}]`);
        metadata.set(key, { type: 'array', itemType: itemType as GgufScalarType, value });
      } else {
        metadata.set(key, { type, value: await c.scalar(type, key) });
      }
    }
    const alignValue = metadata.get('general.alignment');
    let alignment = DEFAULT_ALIGNMENT;
    if (alignValue) {
      if (alignValue.type !== 'u32' || typeof alignValue.value !== 'number' || alignValue.value === 0 || (alignValue.value & (alignValue.value - 1)) !== 0) fail('general.alignment must be a u32 power of two');
      alignment = alignValue.value as number;
    }
    const raw: { name: string; shape: number[]; type: string; rel: number }[] = [];
    const names = new Set<string>();
    for (let i = 0; i < nTensors; i++) {
      const name = await c.string(`tensor name ${i}`);
      if (names.has(name)) fail(`tensor ${name} appears twice`);
      names.add(name);
      const nd = await c.u32();
      if (nd < 1 || nd > 4) fail(`tensor ${name} has ${nd} dimensions (1 to 4 expected)`);
      const shape: number[] = [];
      for (let d = 0; d < nd; d++) shape.push(await c.u64(`dimension ${d} of ${name}`));
      const code = await c.u32();
      const type = TENSOR_TYPE_NAMES.get(code);
      if (!type) fail(`tensor ${name} has unknown type ${code}`);
      const rel = await c.u64(`offset of ${name}`);
      if (rel % alignment !== 0) fail(`tensor ${name}'s offset ${rel} is not aligned to ${alignment}`);
      raw.push({ name, shape, type: type!, rel });
    }
    const dataOffset = alignUp(c.pos, alignment);
    const tensors: GgufTensorInfo[] = raw.map((t) => {
      const bytes = tensorBytes(t.shape, t.type);
      if (bytes === null) fail(`tensor ${t.name} of shape [${t.shape}] is not a whole number of ${t.type} blocks`);
      if (dataOffset + t.rel + bytes! > size) fail(`tensor ${t.name} (${bytes} bytes at ${dataOffset + t.rel}) runs past the end of the file (${size} bytes)`);
      return { name: t.name, shape: t.shape, type: t.type, offset: dataOffset + t.rel, bytes: bytes! };
    });
    const sorted = [...tensors].sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i - 1]!.offset + sorted[i - 1]!.bytes > sorted[i]!.offset) fail(`tensors ${sorted[i - 1]!.name} and ${sorted[i]!.name} overlap`);
    }
    return { version, metadata, tensors, dataOffset, alignment };
  } finally {
    await fh.close();
  }
}

/** One tensor's bytes (whole; for tests and small tensors). */
export async function readTensorData(file: string, t: GgufTensorInfo): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(t.bytes);
    const { bytesRead } = await fh.read(b, 0, t.bytes, t.offset);
    if (bytesRead !== t.bytes) throw new ForgeError('bad_gguf', `not a valid GGUF file: tensor ${t.name} is cut short`, { file });
    return b;
  } finally {
    await fh.close();
  }
}
