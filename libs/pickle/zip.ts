import { open } from 'node:fs/promises';
import { ForgeError } from '../errors';

/**
 * A minimal ZIP central-directory reader (ZIP64 included) for PyTorch checkpoints. Only what torch.save writes:
 * stored (uncompressed) entries whose bytes can be read in place. Reads go through a ranged reader, so the same
 * code works on a local file or on HTTP Range requests.
 */
export interface RangeSource {
  /** Where errors point (file path or URL). */
  name: string;
  size: number;
  read(offset: number, length: number): Promise<Buffer>;
}

export interface ZipEntry {
  name: string;
  /** 0 = stored; anything else cannot be read in place. */
  method: number;
  compressedSize: number;
  size: number;
  crc32: number;
  localHeaderOffset: number;
}

export class ZipError extends ForgeError {}

const EOCD_SIG = 0x06054b50;
const EOCD64_LOCATOR_SIG = 0x07064b50;
const EOCD64_SIG = 0x06064b50;
const CDH_SIG = 0x02014b50;
const LFH_SIG = 0x04034b50;

function u64(b: Buffer, at: number, what: string, file: string): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ZipError('zip_bad', `${what} ${v} is too large`, { file });
  return Number(v);
}

export async function fileSource(file: string): Promise<RangeSource & { close(): Promise<void> }> {
  const fh = await open(file, 'r');
  const { size } = await fh.stat();
  return {
    name: file,
    size,
    async read(offset, length) {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw new ZipError('zip_truncated', `file ended at ${offset + done} while reading ${length} bytes at ${offset}`, { file });
        done += bytesRead;
      }
      return buf;
    },
    close: () => fh.close(),
  };
}

/** Reads the central directory: every entry by name. */
export async function readZipDirectory(src: RangeSource): Promise<Map<string, ZipEntry>> {
  const file = src.name;
  if (src.size < 22) throw new ZipError('zip_bad', `not a zip archive (${src.size} bytes)`, { file });
  // The end record sits in the last 22 bytes plus an optional comment of at most 65535 bytes.
  const tailLen = Math.min(src.size, 22 + 65535 + 20);
  const tailStart = src.size - tailLen;
  const tail = await src.read(tailStart, tailLen);
  let eocd = -1;
  for (let i = tail.length - 22; i >= 0; i--) {
    if (tail.readUInt32LE(i) === EOCD_SIG) { eocd = i; break; }
  }
  if (eocd < 0) throw new ZipError('zip_bad', 'not a zip archive (no end-of-central-directory record); old-style (pre-1.6) torch.save files are not supported', { file });
  let count = tail.readUInt16LE(eocd + 10);
  let cdSize = tail.readUInt32LE(eocd + 12);
  let cdOffset = tail.readUInt32LE(eocd + 16);
  const loc = eocd - 20;
  if (loc >= 0 && tail.readUInt32LE(loc) === EOCD64_LOCATOR_SIG) {
    const eocd64Offset = u64(tail, loc + 8, 'ZIP64 record offset', file);
    const rec = await src.read(eocd64Offset, 56);
    if (rec.readUInt32LE(0) !== EOCD64_SIG) throw new ZipError('zip_bad', 'ZIP64 end record not found where its locator points', { file });
    count = u64(rec, 32, 'entry count', file);
    cdSize = u64(rec, 40, 'central directory size', file);
    cdOffset = u64(rec, 48, 'central directory offset', file);
  }
  if (cdOffset + cdSize > src.size) throw new ZipError('zip_bad', 'central directory runs past the end of the file (truncated download?)', { file });
  const cd = await src.read(cdOffset, cdSize);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  for (let i = 0; i < count; i++) {
    if (p + 46 > cd.length || cd.readUInt32LE(p) !== CDH_SIG) throw new ZipError('zip_bad', `central directory entry ${i} is malformed`, { file });
    const method = cd.readUInt16LE(p + 10);
    const crc32 = cd.readUInt32LE(p + 16);
    let compressedSize = cd.readUInt32LE(p + 20);
    let size = cd.readUInt32LE(p + 24);
    const nameLen = cd.readUInt16LE(p + 28);
    const extraLen = cd.readUInt16LE(p + 30);
    const commentLen = cd.readUInt16LE(p + 32);
    let localHeaderOffset = cd.readUInt32LE(p + 42);
    const name = cd.toString('utf8', p + 46, p + 46 + nameLen);
    // ZIP64 extra field: only the fields saturated in the fixed header are present, in this order.
    let e = p + 46 + nameLen;
    const eEnd = e + extraLen;
    while (e + 4 <= eEnd) {
      const id = cd.readUInt16LE(e);
      const len = cd.readUInt16LE(e + 2);
      if (id === 0x0001) {
        let q = e + 4;
        if (size === 0xffffffff) { size = u64(cd, q, 'entry size', file); q += 8; }
        if (compressedSize === 0xffffffff) { compressedSize = u64(cd, q, 'entry size', file); q += 8; }
        if (localHeaderOffset === 0xffffffff) { localHeaderOffset = u64(cd, q, 'entry offset', file); q += 8; }
      }
      e += 4 + len;
    }
    entries.set(name, { name, method, compressedSize, size, crc32, localHeaderOffset });
    p = eEnd + commentLen;
  }
  return entries;
}

/** Absolute offset of an entry's bytes: the local header's own name/extra lengths differ from the central copy (torch pads for alignment). */
export async function entryDataOffset(src: RangeSource, entry: ZipEntry): Promise<number> {
  const h = await src.read(entry.localHeaderOffset, 30);
  if (h.readUInt32LE(0) !== LFH_SIG) throw new ZipError('zip_bad', `local header of ${entry.name} not found at ${entry.localHeaderOffset}`, { file: src.name });
  const start = entry.localHeaderOffset + 30 + h.readUInt16LE(26) + h.readUInt16LE(28);
  if (start + entry.compressedSize > src.size) throw new ZipError('zip_truncated', `entry ${entry.name} runs past the end of the file`, { file: src.name });
  return start;
}

/** Reads a stored entry whole (used only for the small data.pkl and marker entries). */
export async function readStoredEntry(src: RangeSource, entry: ZipEntry): Promise<Buffer> {
  if (entry.method !== 0) throw new ZipError('zip_compressed', `entry ${entry.name} is compressed (method ${entry.method}); torch.save writes stored entries only`, { file: src.name });
  return src.read(await entryDataOffset(src, entry), entry.size);
}
