import { open } from 'node:fs/promises';
import { ForgeError } from '../errors';
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

const WRITE_BATCH = 8 << 20;
const SMALL_CHUNK = 1 << 20;

/**
 * Writes a GGUF file in one pass: the header first (every size is known from the shapes), then each tensor's
 * bytes as they come, each padded to the alignment. A tensor that yields more or fewer bytes than its shape
 * and type call for stops the write.
 */
export async function writeGguf(file: string, metadata: GgufKv[], tensors: GgufTensorOut[], opts: { onBytes?: (n: number) => void; release?: (b: Buffer) => void } = {}): Promise<number> {
  const { header, sizes, total } = encodeGgufHeader(metadata, tensors);
  const fh = await open(file, 'wx');
  try {
    let pos = 0;
    // Small chunks are gathered into one of two batch buffers; large ones are written as they are. One write is
    // in flight while the next chunks are encoded; a chunk goes back to its producer (release) once written.
    const batches = [Buffer.allocUnsafeSlow(WRITE_BATCH), Buffer.allocUnsafeSlow(WRITE_BATCH)];
    let which = 0;
    let batched = 0;
    let inFlight: Promise<void> = Promise.resolve();
    const writeAll = async (b: Buffer, at: number) => {
      let off = 0;
      while (off < b.length) off += (await fh.write(b, off, b.length - off, at + off)).bytesWritten;
    };
    const start = async (b: Buffer, after?: () => void) => {
      await inFlight;
      const at = pos;
      pos += b.length;
      inFlight = writeAll(b, at).then(after);
      inFlight.catch(() => undefined);
    };
    const flush = async () => {
      if (batched === 0) return;
      const b = batches[which]!.subarray(0, batched);
      which ^= 1;
      batched = 0;
      await start(b);
    };
    const put = async (b: Buffer) => {
      if (b.length >= SMALL_CHUNK) {
        await flush();
        await start(b, () => opts.release?.(b));
        return;
      }
      if (batched + b.length > WRITE_BATCH) await flush();
      // The buffer about to be filled may be the one the write before last still reads.
      if (batched === 0) await inFlight;
      b.copy(batches[which]!, batched);
      batched += b.length;
      opts.release?.(b);
    };
    await put(header);
    for (const [i, t] of tensors.entries()) {
      let n = 0;
      for await (const chunk of t.bytes()) {
        n += chunk.length;
        if (n > sizes[i]!) break;
        opts.onBytes?.(chunk.length);
        await put(chunk);
      }
      if (n !== sizes[i]) throw new ForgeError('internal', `GGUF tensor ${t.name}: ${n} bytes produced for ${sizes[i]} expected (${t.type} [${t.shape}])`, { tensor: t.name, file });
      const pad = alignUp(n, DEFAULT_ALIGNMENT) - n;
      if (pad > 0) await put(Buffer.alloc(pad));
    }
    await flush();
    await inFlight;
    if (pos !== total) throw new Error(`internal: GGUF ${file} is ${pos} bytes, ${total} planned`);
    return pos;
  } finally {
    await fh.close();
  }
}
