import { createHash } from 'node:crypto';
import { realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { ContentCache } from '../cache';
import { ForgeError } from '../errors';
import { readStable, settledKey, statKey } from '../util';
import { modelFiles } from './files';
import { sha256Threaded } from './hash-thread';
import { sha256Of } from './sha256-file';

/** Work done by content hashing in this process; a memo hit adds nothing (tests read this). */
export const contentIdStats = { filesHashed: 0, bytesHashed: 0 };

/**
 * sha256 of a file's bytes as read now; `onChunk` runs after each chunk is hashed (tests edit the file there, on
 * this thread). Weight files go to the hashing thread (hash-thread.ts).
 */
export async function sha256File(file: string, onChunk?: (bytesSoFar: number) => void | Promise<void>): Promise<string> {
  const r = onChunk ? await sha256Of(file, onChunk) : await sha256Threaded(file, (await stat(file)).size);
  contentIdStats.filesHashed++;
  contentIdStats.bytesHashed += r.bytes;
  return r.sha256;
}

const memoKey = (real: string, key: string) => `content-id-v2:${createHash('sha256').update(JSON.stringify([real, key])).digest('hex')}`;

/**
 * sha256 of a file, memoised by its real path and stat key (size, mtime, ctime, inode, device: stat-key.js): a
 * changed, replaced or re-dated file misses the memo. A file that changed while it was hashed is hashed again;
 * a hash taken within the racy window of the file's last change is not memoised (the next call hashes again).
 */
export async function memoSha256(file: string, cache?: ContentCache, onChunk?: (bytesSoFar: number) => void | Promise<void>): Promise<{ sha256: string; size: number }> {
  const real = await realpath(file);
  if (cache) {
    const hit = await memoHit(real, cache);
    if (hit) return hit;
  }
  const read = await readStable(real, (f) => sha256File(f, onChunk));
  if (!read) throw new ForgeError('changed_while_hashed', 'changed on every one of 3 reads while its content id was computed; wait until nothing writes it and run again', { file: real });
  if (cache && !read.racy) await remember(cache, real, read.key, read.value);
  return { sha256: read.value, size: Number(read.key.split(':')[0]) };
}

/** The memoised sha256 of the file at real path `real` as it is now (this process's memo, then the cache's), or null. */
async function memoHit(real: string, cache: ContentCache): Promise<{ sha256: string; size: number } | null> {
  const st = await stat(real, { bigint: true });
  // This process's memo first: a merge asks for the base's id at several stages, each a cache read otherwise.
  const seen = settled.get(`${cache.dir}\0${real}`);
  if (seen && seen.key === statKey(st)) return { sha256: seen.sha256, size: Number(st.size) };
  // Bound to the file and stats it names (an entry moved under another key is a miss); {"sha256": 64 hex} is ~80 bytes.
  const hit = await cache.getBoundJson<{ sha256: string }>(memoKey(real, statKey(st)), ['content-id', real, statKey(st)], 256);
  if (!hit || typeof hit.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(hit.sha256)) return null;
  settled.set(`${cache.dir}\0${real}`, { key: statKey(st), sha256: hit.sha256 });
  return { sha256: hit.sha256, size: Number(st.size) };
}

/** A settled file's hash into the cache's memo and this process's, under its real path and stat key. */
async function remember(cache: ContentCache, real: string, key: string, sha256: string): Promise<void> {
  await cache.putBoundJson(memoKey(real, key), ['content-id', real, key], { sha256 });
  settled.set(`${cache.dir}\0${real}`, { key, sha256 });
}

/**
 * Records a file's sha256 known without reading it back (a download hashed as it was written, and checked against
 * the Hub's) in the memo, under the stat key the file has once settled (stat-key's settledKey: a file written
 * just now waits out its racy window): the next content id takes it instead of reading the whole file again.
 * Nothing is recorded for a file that changes meanwhile.
 */
export async function recordContentHash(file: string, sha256: string, cache: ContentCache): Promise<boolean> {
  if (!/^[0-9a-f]{64}$/.test(sha256)) return false;
  const real = await realpath(file);
  const key = settledKey(real);
  if (key === null || key === 'changed') return false;
  await remember(cache, real, key, sha256);
  return true;
}

/**
 * Hashes this process took or read from a cache's memo, by cache folder and real path, with the stat key they were
 * taken under (checked on every use, as the cache memo's is). Only settled (non-racy) ones: a racy file is hashed
 * again.
 */
const settled = new Map<string, { key: string; sha256: string }>();

/** Tests: this process's memo of content hashes forgotten (the next lookups go to the cache). */
export function forgetContentHashes(): void {
  settled.clear();
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
  // One at a time: a miss hashes the whole file, and weight files read side by side would make a disk seek.
  for (const name of names) files.push({ name, ...(await memoSha256(join(dir, name), opts.cache)) });
  return idOf(files);
}

function idOf(files: ContentIdResult['files']): ContentIdResult {
  files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const h = createHash('sha256').update('moe-forge content id v1\n');
  for (const f of files) h.update(`${f.name}\0${f.sha256}\n`);
  return { contentId: h.digest('hex'), bytes: files.reduce((a, f) => a + f.size, 0), files };
}

/**
 * The content id of `dir` where every file's hash is memoised for the file as it is now (nothing is read or
 * hashed), else null: for guesses made before the models are hashed.
 */
export async function memoisedContentId(dir: string, cache: ContentCache): Promise<string | null> {
  try {
    const files: ContentIdResult['files'] = [];
    for (const name of await modelFiles(dir)) {
      const hit = await memoHit(await realpath(join(dir, name)), cache);
      if (!hit) return null;
      files.push({ name, ...hit });
    }
    return idOf(files).contentId;
  } catch {
    return null; // the stage that hashes it says what is wrong
  }
}

export async function contentId(dir: string, opts: { cache?: ContentCache } = {}): Promise<string> {
  return (await contentIdDetails(dir, opts)).contentId;
}
