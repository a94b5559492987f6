import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

/** Bytes read per step of a content hash (two buffers: the next read runs while this one is hashed). */
const HASH_CHUNK = 4 << 20;

/**
 * sha256 of a file's bytes as read now, and how many there were; `onChunk` runs after each chunk is hashed (tests
 * edit the file there). Two buffers reused for the whole file: a stream's fresh 4 MiB buffer per chunk cost twice
 * the time and 2.7x the CPU (page faults and collection), which a cold build of large models pays on every byte.
 * Imported by the hashing thread too (hash-worker.ts): nothing here but node's own modules.
 */
export async function sha256Of(file: string, onChunk?: (bytesSoFar: number) => void | Promise<void>): Promise<{ sha256: string; bytes: number }> {
  const h = createHash('sha256');
  const fh = await open(file, 'r');
  let n = 0;
  try {
    const bufs = [Buffer.allocUnsafe(HASH_CHUNK), Buffer.allocUnsafe(HASH_CHUNK)];
    let i = 0;
    let next = fh.read(bufs[0]!, 0, HASH_CHUNK, 0);
    for (;;) {
      const { bytesRead } = await next;
      if (bytesRead === 0) break;
      const cur = bufs[i]!;
      n += bytesRead;
      // With an onChunk (tests), reads wait for it: it may change the file between two chunks.
      if (!onChunk) next = fh.read(bufs[(i ^= 1)]!, 0, HASH_CHUNK, n);
      h.update(cur.subarray(0, bytesRead));
      if (onChunk) {
        await onChunk(n);
        next = fh.read(bufs[(i ^= 1)]!, 0, HASH_CHUNK, n);
      }
    }
  } finally {
    await fh.close();
  }
  return { sha256: h.digest('hex'), bytes: n };
}
