import { ForgeError } from '../errors';
import { openOutputFile } from '../safetensors';
import { DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, SCALAR_SIZES, TENSOR_TYPES, VALUE_CODES, alignUp, tensorBytes, type GgufTensorType } from './format';
import type { GgufKv, GgufScalar, GgufScalarType } from './types';

/** One tensor of a GGUF file: its bytes come in order, already in `type`'s encoding; a yielded chunk is the writer's (not reused). */
export interface GgufTensorOut {
  name: string;
  /** GGUF order: ne0 first. */
  shape: number[];
  type: GgufTensorType;
  bytes: () => AsyncIterable<Buffer>;
}

class HeaderBuilder {
  private parts: Buffer[] = [];
  length = 0;
  private push(b: Buffer) {
    this.parts.push(b);
    this.length += b.length;
  }
  u32(v: number) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number | bigint) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  string(s: string) {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  scalar(type: GgufScalarType, v: GgufScalar, key: string) {
    if (type === 'string') {
      if (typeof v !== 'string') throw new Error(`internal: GGUF key ${key} holds a ${typeof v}, not a string`);
      this.string(v);
      return;
    }
    const b = Buffer.alloc(SCALAR_SIZES[type]!);
    const num = () => {
      if (typeof v !== 'number' && typeof v !== 'bigint') throw new Error(`internal: GGUF key ${key} holds a ${typeof v}, not a number`);
      return v;
    };
    switch (type) {
      case 'bool': b.writeUInt8(v ? 1 : 0); break;
      case 'u8': b.writeUInt8(Number(num())); break;
      case 'i8': b.writeInt8(Number(num())); break;
      case 'u16': b.writeUInt16LE(Number(num())); break;
      case 'i16': b.writeInt16LE(Number(num())); break;
      case 'u32': b.writeUInt32LE(Number(num())); break;
      case 'i32': b.writeInt32LE(Number(num())); break;
      case 'f32': b.writeFloatLE(Number(num())); break;
      case 'f64': b.writeDoubleLE(Number(num())); break;
      case 'u64': b.writeBigUInt64LE(BigInt(num())); break;
      case 'i64': b.writeBigInt64LE(BigInt(num())); break;
    }
    this.push(b);
  }
  pad(to: number) {
    const n = alignUp(this.length, to) - this.length;
    if (n > 0) this.push(Buffer.alloc(n));
  }
  bytes() {
    return Buffer.concat(this.parts);
  }
}

/** The header (metadata and tensor table, padded to the alignment), and where each tensor's data goes. */
export function encodeGgufHeader(metadata: GgufKv[], tensors: Pick<GgufTensorOut, 'name' | 'shape' | 'type'>[], alignment = DEFAULT_ALIGNMENT): { header: Buffer; sizes: number[]; total: number } {
  const h = new HeaderBuilder();
  h.u32(GGUF_MAGIC);
  h.u32(GGUF_VERSION);
  h.u64(tensors.length);
  h.u64(metadata.length);
  const seen = new Set<string>();
  for (const { key, value } of metadata) {
    if (seen.has(key)) throw new Error(`internal: GGUF key ${key} given twice`);
    seen.add(key);
    h.string(key);
    h.u32(VALUE_CODES[value.type]);
    if (value.type === 'array') {
      h.u32(VALUE_CODES[value.itemType]);
      h.u64(value.value.length);
      for (const item of value.value) h.scalar(value.itemType, item, key);
    } else {
      h.scalar(value.type, value.value, key);
    }
  }
  const sizes: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    const bytes = tensorBytes(t.shape, t.type);
    if (bytes === null) throw new Error(`internal: GGUF tensor ${t.name} [${t.shape}] is not whole ${t.type} blocks`);
    h.string(t.name);
    h.u32(t.shape.length);
    for (const d of t.shape) h.u64(d);
    h.u32(TENSOR_TYPES[t.type]!.code);
    h.u64(offset);
    sizes.push(bytes);
    offset += alignUp(bytes, alignment);
  }
  h.pad(alignment);
  return { header: h.bytes(), sizes, total: h.length + offset };
}

/**
 * Writes a GGUF file in one pass: the header first (every size is known from the shapes), then each tensor's
 * bytes as they come, each padded to the alignment, then fsync (the stamp that vouches for the file follows).
 * The bytes go around the page cache where the file system allows (safetensors' openOutputFile: a GGUF is as
 * large as the shards). A tensor that yields more or fewer bytes than its shape and type call for stops the write.
 */
export async function writeGguf(file: string, metadata: GgufKv[], tensors: GgufTensorOut[], opts: { onBytes?: (n: number) => void; release?: (b: Buffer) => void; direct?: boolean; directMinBytes?: number } = {}): Promise<number> {
  const { header, sizes, total } = encodeGgufHeader(metadata, tensors);
  const out = await openOutputFile(file, { create: 'exclusive', size: total, direct: opts.direct, directMinBytes: opts.directMinBytes });
  try {
    await out.put(header);
    for (const [i, t] of tensors.entries()) {
      let n = 0;
      for await (const chunk of t.bytes()) {
        n += chunk.length;
        if (n > sizes[i]!) break;
        opts.onBytes?.(chunk.length);
        // Taken once put resolves: the chunk goes back to its producer.
        await out.put(chunk);
        opts.release?.(chunk);
      }
      if (n !== sizes[i]) throw new ForgeError('internal', `GGUF tensor ${t.name}: ${n} bytes produced for ${sizes[i]} expected (${t.type} [${t.shape}])`, { tensor: t.name, file });
      const pad = alignUp(n, DEFAULT_ALIGNMENT) - n;
      if (pad > 0) await out.put(Buffer.alloc(pad));
    }
    const pos = await out.finish();
    if (pos !== total) throw new Error(`internal: GGUF ${file} is ${pos} bytes, ${total} planned`);
    return pos;
  } finally {
    await out.close();
  }
}
