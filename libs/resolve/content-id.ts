import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ContentCache } from '../cache';
import { modelFiles } from './files';

/** Work done by content hashing in this process; a memo hit adds nothing (tests read this). */
export const contentIdStats = { filesHashed: 0, bytesHashed: 0 };

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  let n = 0;
  for await (const chunk of createReadStream(file, { highWaterMark: 4 << 20 })) {
    h.update(chunk as Buffer);
    n += (chunk as Buffer).length;
  }
  contentIdStats.filesHashed++;
  contentIdStats.bytesHashed += n;
  return h.digest('hex');
}

/** sha256 of a file, memoised by (real path, size, mtime, inode): a changed or replaced file misses the memo. */
export async function memoSha256(file: string, cache?: ContentCache): Promise<{ sha256: string; size: number }> {
  const real = await realpath(file);
  const st = await stat(real, { bigint: true });
  const size = Number(st.size);
  if (!cache) return { sha256: await sha256File(real), size };
  const material = ['content-id', real, st.size.toString(), st.mtimeNs.toString(), st.ino.toString()];
  const key = `content-id:${createHash('sha256').update(JSON.stringify(material.slice(1))).digest('hex')}`;
  // Bound to the file it names (an entry moved under another key is a miss); {"sha256": 64 hex} is ~80 bytes.
  const hit = await cache.getBoundJson<{ sha256: string }>(key, material, 256);
  if (hit && typeof hit.sha256 === 'string' && /^[0-9a-f]{64}$/.test(hit.sha256)) return { sha256: hit.sha256, size };
  const sha256 = await sha256File(real);
  await cache.putBoundJson(key, material, { sha256 });
  return { sha256, size };
}

export interface ContentIdResult {
  contentId: string;
  /** Total size of the files the id covers. */
  bytes: number;
  files: { name: string; sha256: string; size: number }[];
}

/**
 * The identity of a model's content, independent of where it lives: sha256 over the names and content hashes of
 * config.json, the tokenizer files and the weight files (index included).
 */
export async function contentIdDetails(dir: string, opts: { cache?: ContentCache; ref?: string } = {}): Promise<ContentIdResult> {
  const names = await modelFiles(dir, opts.ref);
  const files: ContentIdResult['files'] = [];
  for (const name of names) files.push({ name, ...(await memoSha256(join(dir, name), opts.cache)) });
  files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const h = createHash('sha256').update('moe-forge content id v1\n');
  for (const f of files) h.update(`${f.name}\0${f.sha256}\n`);
  return { contentId: h.digest('hex'), bytes: files.reduce((a, f) => a + f.size, 0), files };
}

export async function contentId(dir: string, opts: { cache?: ContentCache } = {}): Promise<string> {
  return (await contentIdDetails(dir, opts)).contentId;
}
