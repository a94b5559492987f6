import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, statfs, truncate } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { HubApiError } from '@huggingface/hub';
import { ModelError } from '../errors';
import { headerLengthFrom, parseHeader, type SafetensorsHeader } from '../safetensors';
import type { RangeSource } from '../pickle';
import { linkSnapshotFile, pathInside, repoStorage, snapshotDir, unsafePathReason } from './hf-cache';
import { backoff, forMetadata, gaveUp, hubFetch, hubStats, isTransient, NetworkGaveUp, oneLine, readCapped, requestWithRetries, retryNotice, ShortBody, timedRequest, hubHeaders, isTransientStatus, retryAfterMs, TransientStatus, urlPlace } from './http';
import type { HubSettings } from './settings';
import { recordContentHash } from './content-id';

// Loaded at first use: only fetch talks to the Hub, and loading the client is ~40 ms of every stage's start.
const hub = (): typeof import('@huggingface/hub') => require('@huggingface/hub');

/** One file of a hub revision, with the hashes the hub reports for it. */
export interface RemoteFile {
  path: string;
  size: number;
  /** LFS files: the sha256 of the content (the LFS oid). */
  sha256: string | null;
  /** The git blob oid (sha1 of "blob <size>\0" + content). */
  gitOid: string | null;
}

export interface RemoteSnapshot {
  repo: string;
  sha: string;
  files: Map<string, RemoteFile>;
}

const SHA256 = /^[0-9a-f]{64}$/;
const SHA1 = /^[0-9a-f]{40}$/;

export { hubStats };

/** Turns hub and network failures into one-line ModelErrors that name the reference, host and file, and say what to do. */
export function hubFailure(e: unknown, refText: string, s: HubSettings, what: string): ModelError {
  if (e instanceof ModelError) return e;
  const fsError = cacheWriteFailure(e, s, refText);
  if (fsError) return fsError;
  if (e instanceof hub().HubApiError) {
    const detail = oneLine(e.message.replace(/\. URL: .*$/s, '')) || `HTTP ${e.statusCode}`;
    if (e.statusCode === 401 || e.statusCode === 403) {
      const why = s.token
        ? `the token in HF_TOKEN was refused (HTTP ${e.statusCode}); make sure it has access to this model (gated models need access granted on their page)`
        : `the hub answered HTTP ${e.statusCode}: this model is gated or private, so a Hugging Face token is needed: set HF_TOKEN to a token that has access`;
      return new ModelError('hub_auth', `cannot ${what} for model ${refText} from ${s.hubUrl}: ${why} (${detail})`);
    }
    if (e.statusCode === 404) {
      return new ModelError('hub_not_found', `model ${refText} was not found on ${s.hubUrl} (no such repository, revision or file; it is also not a local folder) (${detail})`);
    }
    return new ModelError('hub_error', `cannot ${what} for model ${refText}: the hub at ${s.hubUrl} answered HTTP ${e.statusCode} (${detail})`);
  }
  if (e instanceof NetworkGaveUp) {
    const hint = what.startsWith('download') ? 'running again resumes the download' : 'set HF_HUB_OFFLINE=1 to use only local folders and the cache';
    return new ModelError('hub_unreachable', `cannot ${what} for model ${refText}: ${e.message}; ${hint}`);
  }
  const err = e as Error & { cause?: { code?: string; message?: string } };
  const cause = oneLine(String(err?.cause?.code ?? err?.cause?.message ?? err?.message ?? e));
  return new ModelError('hub_unreachable', `cannot ${what} for model ${refText}: the hub at ${s.hubUrl} could not be reached (${cause}). Set HF_HUB_OFFLINE=1 to use only local folders and the cache`);
}

const FS_WHY: Record<string, string> = { ENOSPC: 'the disk is full', EDQUOT: 'the disk quota is used up', EACCES: 'permission denied', EPERM: 'permission denied', EROFS: 'the file system is read-only', ENOTDIR: 'a file stands where a folder should be', EEXIST: 'a file is in the way', EISDIR: 'a folder stands where a file should be' };

/** A file-system failure while writing into the Hugging Face cache, as one line naming the path; null for other errors. */
export function cacheWriteFailure(e: unknown, s: HubSettings, refText: string): ModelError | null {
  const err = e as NodeJS.ErrnoException | null;
  if (!err || typeof err !== 'object' || !err.syscall || !err.code || !(err.code in FS_WHY)) return null;
  return new ModelError('cache_unwritable', `cannot store model ${refText} in the Hugging Face cache ${s.cacheDir} (HF_HUB_CACHE): ${FS_WHY[err.code]} (${err.code}, ${err.syscall}${err.path ? ` ${err.path}` : ''})`);
}

/** The commit a revision names, and its top-level files with their hashes. */
export async function remoteSnapshot(repo: string, revision: string | null, s: HubSettings, refText: string): Promise<RemoteSnapshot> {
  // The token travels in hubFetch's header, not through the client, which refuses tokens without the hf_ prefix.
  const base = { hubUrl: s.hubUrl, fetch: hubFetch(s) };
  try {
    const info = await hub().modelInfo({ ...base, name: repo, revision: revision ?? 'main', additionalFields: ['sha'] });
    const sha = (info as { sha?: string }).sha;
    if (!sha || !SHA1.test(sha)) throw new ModelError('hub_error', `the hub at ${s.hubUrl} gave no commit sha for ${refText} (got ${oneLine(JSON.stringify(sha ?? null), 60)})`);
    const files = new Map<string, RemoteFile>();
    for await (const e of hub().listFiles({ ...base, repo, revision: sha, recursive: false })) {
      if (e.type !== 'file') continue;
      const name = String(e.path);
      const why = unsafePathReason(name);
      // Names with `..`, absolute paths or control characters cannot come from a git tree: the hub is not to be trusted.
      if (why && why !== 'it holds a backslash') {
        throw new ModelError('unsafe_path', `the hub at ${s.hubUrl} lists a file named ${oneLine(JSON.stringify(name), 120)} for ${refText} (commit ${sha}); refused, ${why}`);
      }
      const lfsOid = e.lfs?.oid ?? null;
      files.set(name, {
        path: name,
        size: e.lfs?.size ?? e.size,
        sha256: lfsOid && SHA256.test(lfsOid) ? lfsOid : null,
        gitOid: e.oid && SHA1.test(e.oid) ? e.oid : null,
      });
    }
    return { repo, sha, files };
  } catch (e) {
    throw hubFailure(e, refText, s, 'list the files');
  }
}

function stripEtag(etag: string): string {
  return etag.replace(/^W\//, '').replace(/^"|"$/g, '');
}

function fileUrl(s: HubSettings, snap: RemoteSnapshot, path: string): string {
  return `${s.hubUrl}/${snap.repo}/resolve/${snap.sha}/${path.split('/').map(encodeURIComponent).join('/')}`;
}

async function apiError(res: Response, url: string): Promise<HubApiError> {
  await res.body?.cancel().catch(() => undefined);
  return new (hub().HubApiError)(url, res.status, undefined, oneLine(res.headers.get('x-error-message') ?? `HTTP ${res.status}`));
}

/** A content problem (wrong size or hash): retrying cannot help and the partial file is discarded. */
class BadContent extends ModelError {}

const PARTIAL = /^(.+)\.(\d+)-[0-9a-f]+\.incomplete$/;
/** Partial blobs this process is writing; any other partial of a dead process (or of an earlier call here) is resumable. */
const activePartials = new Set<string>();

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The partial file to write blobs/<etag> through: a partial left by an interrupted download of the same blob
 * (its writer gone) is taken over by renaming it to this download's own name, so two live downloads never share one.
 */
async function claimPartial(blobsDir: string, etag: string): Promise<string> {
  const mine = join(blobsDir, `${etag}.${process.pid}-${randomBytes(4).toString('hex')}.incomplete`);
  const leftovers: { path: string; size: number }[] = [];
  for (const name of await readdir(blobsDir).catch(() => [] as string[])) {
    const m = PARTIAL.exec(name);
    if (!m || m[1] !== etag) continue;
    const path = join(blobsDir, name);
    const pid = Number(m[2]);
    const orphan = pid === process.pid ? !activePartials.has(path) : !processAlive(pid);
    if (!orphan) continue;
    const st = await stat(path).catch(() => null);
    if (st?.isFile()) leftovers.push({ path, size: st.size });
  }
  leftovers.sort((a, b) => b.size - a.size);
  let claimed = false;
  for (const l of leftovers) {
    if (!claimed) {
      try {
        await rename(l.path, mine);
        claimed = true;
        continue;
      } catch {
        continue; // another process took it first
      }
    }
    await rm(l.path, { force: true }); // a smaller partial of the same blob, superseded
  }
  activePartials.add(mine);
  return mine;
}

const size = (b: number) => (b >= 1e9 ? `${(b / 1e9).toFixed(2)} GB` : b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e3).toFixed(1)} kB`);

const PROGRESS_MIN_BYTES = 100_000;

interface Expected {
  algo: 'sha256' | 'sha1';
  hex: string;
}

/**
 * Downloads `url` into `part` until it holds `total` bytes, resuming with a Range request from what is on disk
 * after any transient failure (and from a partial left by an earlier run); checks the hash as bytes arrive.
 * Failed attempts in a row are bounded by s.retries; an attempt that brought bytes resets the count.
 */
async function downloadResumable(s: HubSettings, url: string, part: string, total: number, expected: Expected, label: string): Promise<number> {
  const freshHash = () => {
    const h = createHash(expected.algo);
    if (expected.algo === 'sha1') h.update(`blob ${total}\0`);
    return h;
  };
  let hash = freshHash();
  let hashed = 0;
  const restartHash = async (have: number) => {
    hash = freshHash();
    hashed = 0;
    if (have > 0) {
      for await (const chunk of createReadStream(part, { start: 0, end: have - 1, highWaterMark: 4 << 20 })) hash.update(chunk as Buffer);
      hashed = have;
    }
  };
  // Small files (config, tokenizer settings) would only add noise.
  const progress = total >= PROGRESS_MIN_BYTES ? (s.progress?.(label) ?? null) : null;
  const started = Date.now();
  let fetched = 0;
  let lastDraw = 0;
  const draw = (have: number, force = false) => {
    const now = Date.now();
    if (!progress || (!force && now - lastDraw < 250)) return;
    lastDraw = now;
    const secs = Math.max((now - started) / 1000, 1e-3);
    progress.update(have, total, `${size(have)}/${size(total)}, ${(fetched / 1e6 / secs).toFixed(1)} MB/s`);
  };
  let failures = 0;
  let warned = false;
  try {
    for (;;) {
      let have = (await stat(part).catch(() => null))?.size ?? 0;
      if (have > total) {
        await truncate(part, 0);
        have = 0;
      }
      if (hashed !== have) await restartHash(have);
      if (have === total) break;
      const before = have;
      try {
        const res = await timedRequest(s, url, { headers: hubHeaders(s, url, have > 0 ? { range: `bytes=${have}-` } : {}) });
        if (isTransientStatus(res.status)) {
          await res.body?.cancel().catch(() => undefined);
          throw new TransientStatus(res.status, retryAfterMs(res), urlPlace(url));
        }
        if (res.status === 416 && have > 0) {
          // The server cannot serve from where we are: start over.
          await res.body?.cancel().catch(() => undefined);
          await truncate(part, 0);
          throw new ShortBody(`${urlPlace(url)} refused to resume at byte ${have}`);
        }
        if (res.status !== 200 && res.status !== 206) throw await apiError(res, url);
        if (res.status === 206) {
          const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
          if (!m || Number(m[1]) !== have) {
            await res.body?.cancel().catch(() => undefined);
            await truncate(part, 0);
            throw new ShortBody(`${urlPlace(url)} answered a resume at byte ${have} with range ${oneLine(res.headers.get('content-range') ?? 'none', 60)}`);
          }
        } else if (have > 0) {
          // The server ignored the Range header and sends the whole file.
          await truncate(part, 0);
          await restartHash(0);
          have = 0;
        }
        const fh = await open(part, 'a');
        try {
          for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
            if (have + chunk.length > total) {
              await res.body?.cancel().catch(() => undefined);
              throw new BadContent('size_mismatch', `the hub sent more than the ${total} bytes it listed; refusing the file`);
            }
            await fh.write(chunk);
            hash.update(chunk);
            have += chunk.length;
            hashed = have;
            fetched += chunk.length;
            hubStats.bytesDownloaded += chunk.length;
            draw(have);
          }
        } finally {
          await fh.close();
        }
        if (have < total) throw new ShortBody(`${urlPlace(url)} ended the download at byte ${have} of ${total}`);
      } catch (e) {
        if (e instanceof BadContent || !isTransient(e)) throw e;
        const now = (await stat(part).catch(() => null))?.size ?? 0;
        if (now > before) failures = 0;
        failures++;
        if (failures > s.retries) throw gaveUp(e, url, failures);
        if (!warned) warned = retryNotice(s, e, failures);
        await backoff(s, failures, e);
      }
    }
    draw(total, true);
  } finally {
    progress?.end();
  }
  const actual = hash.digest('hex');
  if (actual !== expected.hex) {
    throw new BadContent('hash_mismatch', `downloaded content has ${expected.algo === 'sha256' ? 'sha256' : 'git oid'} ${actual}, the hub said ${expected.hex}; refusing the file (nothing was kept)`);
  }
  return fetched;
}

/** Bytes still to download for these files: not in the snapshot or blobs yet, less what a partial holds. */
async function bytesToFetch(snap: RemoteSnapshot, files: RemoteFile[], s: HubSettings): Promise<number> {
  const blobsDir = join(repoStorage(s.cacheDir, snap.repo), 'blobs');
  const names = await readdir(blobsDir).catch(() => [] as string[]);
  let need = 0;
  for (const f of files) {
    const have = await stat(pathInside(snapshotDir(s.cacheDir, snap.repo, snap.sha), f.path)).catch(() => null);
    if (have?.isFile() && have.size === f.size) continue;
    const hex = f.sha256 ?? f.gitOid;
    if (hex && (await stat(join(blobsDir, hex)).catch(() => null))?.size === f.size) continue;
    let partial = 0;
    for (const n of names) {
      const m = PARTIAL.exec(n);
      if (m && m[1] === hex) partial = Math.max(partial, (await stat(join(blobsDir, n)).catch(() => null))?.size ?? 0);
    }
    need += Math.max(0, f.size - partial);
  }
  return need;
}

/**
 * Refuses before the first byte when the cache's disk cannot hold the weights still to download, rather than
 * filling it and failing hours in (a 7B model is ~15 GB). A little room is kept for the rest of the system.
 */
export async function checkCacheSpace(snap: RemoteSnapshot, files: RemoteFile[], s: HubSettings, refText: string): Promise<void> {
  const need = await bytesToFetch(snap, files, s);
  if (need === 0) return;
  let at = s.cacheDir;
  while (!existsSync(at) && dirname(at) !== at) at = dirname(at);
  const fs = await statfs(at);
  const free = Number(fs.bavail) * Number(fs.bsize);
  const margin = 64 << 20;
  if (need + margin > free) {
    throw new ModelError('no_space', `not enough free space to download model ${refText} into the Hugging Face cache ${s.cacheDir} (HF_HUB_CACHE): ${size(need)} to download, ${size(free)} free; free some space or point HF_HUB_CACHE at a larger disk`);
  }
}

/**
 * Puts one file of a snapshot into the cache unless it is already there: download into a partial file, check
 * size and hash against the hub's metadata, rename to blobs/<etag>, then link snapshots/<sha>/<file>.
 * A wrong hash leaves nothing behind; an interrupted download leaves its partial to be resumed. Returns the
 * bytes downloaded (0 when cached).
 */
export async function fetchIntoCache(snap: RemoteSnapshot, file: RemoteFile, s: HubSettings, refText: string): Promise<number> {
  try {
    return await fetchFile(snap, file, s, refText);
  } catch (e) {
    throw cacheWriteFailure(e, s, refText) ?? e;
  }
}

async function fetchFile(snap: RemoteSnapshot, file: RemoteFile, s: HubSettings, refText: string): Promise<number> {
  const why = unsafePathReason(file.path);
  if (why) throw new ModelError('unsafe_path', `the hub at ${s.hubUrl} lists a file named ${oneLine(JSON.stringify(file.path), 120)} for ${refText}; refusing to write it, ${why}`);
  const pointer = pathInside(snapshotDir(s.cacheDir, snap.repo, snap.sha), file.path);
  const have = await stat(pointer).catch(() => null);
  if (have?.isFile() && have.size === file.size) return 0;

  const url = fileUrl(s, snap, file.path);
  const what = `download ${file.path}`;
  let expected: Expected | null = file.sha256 ? { algo: 'sha256', hex: file.sha256 } : file.gitOid ? { algo: 'sha1', hex: file.gitOid } : null;
  if (!expected) {
    // The tree gave no hash: the file's ETag, when it is a sha256 (as huggingface_hub reads X-Linked-Etag, else ETag).
    let etag = '';
    try {
      etag = await requestWithRetries(forMetadata(s), url, { headers: { range: 'bytes=0-0' } }, async (res) => {
        await res.body?.cancel().catch(() => undefined);
        if (!res.ok) throw await apiError(res, url);
        return stripEtag(res.headers.get('x-linked-etag') ?? res.headers.get('etag') ?? '');
      });
    } catch (e) {
      throw hubFailure(e, refText, s, what);
    }
    if (SHA256.test(etag)) expected = { algo: 'sha256', hex: etag };
  }
  if (!expected) throw new ModelError('hash_unknown', `${file.path} of ${refText}: the hub at ${s.hubUrl} reports no hash for it, so it cannot be verified`);

  const blobsDir = join(repoStorage(s.cacheDir, snap.repo), 'blobs');
  const blob = pathInside(blobsDir, expected.hex);
  const blobStat = await stat(blob).catch(() => null);
  if (blobStat?.isFile() && blobStat.size === file.size) {
    await linkSnapshotFile(blob, pointer);
    return 0;
  }

  await mkdir(blobsDir, { recursive: true });
  const part = await claimPartial(blobsDir, expected.hex);
  let got: number;
  const label = `downloading ${snap.repo} ${file.path}`;
  try {
    const inherited = (await stat(part).catch(() => null))?.size ?? 0;
    try {
      got = await downloadResumable(s, url, part, file.size, expected, label);
    } catch (e) {
      // Bytes left by an earlier run may be what spoiled the hash: once more from zero before giving up.
      if (!(e instanceof BadContent && e.code === 'hash_mismatch' && inherited > 0)) throw e;
      await truncate(part, 0);
      got = await downloadResumable(s, url, part, file.size, expected, label);
    }
    await rename(part, blob);
  } catch (e) {
    if (e instanceof BadContent) {
      await rm(part, { force: true });
      throw new ModelError(e.code, `${file.path} of ${refText}: ${e.message}`);
    }
    throw hubFailure(e, refText, s, what);
  } finally {
    activePartials.delete(part);
  }
  // Its bytes were hashed as they were written and matched the Hub's sha256: the content-id memo takes that hash,
  // so the build that downloaded a model does not read its weights again to hash them.
  if (expected.algo === 'sha256' && s.contentCache) await recordContentHash(blob, expected.hex, s.contentCache).catch(() => false);
  await linkSnapshotFile(blob, pointer);
  return got;
}

/** A file on the hub read by HTTP Range requests only (headers of safetensors, the directory of a .bin zip). */
export function remoteRangeSource(snap: RemoteSnapshot, file: RemoteFile, s: HubSettings, refText: string): RangeSource {
  const url = fileUrl(s, snap, file.path);
  return {
    name: `${snap.repo}@${snap.sha}/${file.path}`,
    size: file.size,
    async read(offset: number, length: number): Promise<Buffer> {
      if (length === 0) return Buffer.alloc(0);
      let buf: Buffer;
      try {
        buf = await requestWithRetries(forMetadata(s), url, { headers: { range: `bytes=${offset}-${offset + length - 1}` } }, async (res) => {
          if (res.status === 401 || res.status === 403 || res.status === 404) throw await apiError(res, url);
          if (res.status !== 206) {
            // A server that ignores Range would send the whole file: stop reading at once.
            await res.body?.cancel().catch(() => undefined);
            throw new ModelError('hub_no_range', `${file.path} of ${refText}: the hub at ${s.hubUrl} answered HTTP ${res.status} to a range request; header-only validation needs range support`);
          }
          return readCapped(res, length, `${file.path} of ${refText} at ${s.hubUrl}, bytes ${offset}-${offset + length - 1}`);
        });
      } catch (e) {
        throw hubFailure(e, refText, s, `read ${file.path}`);
      }
      hubStats.bytesDownloaded += buf.length;
      if (buf.length !== length) throw new ModelError('hub_short_read', `${file.path} of ${refText}: asked ${s.hubUrl} for ${length} bytes at ${offset}, got ${buf.length}`);
      return buf;
    },
  };
}

/** A safetensors header by two range requests: the 8-byte length, then the JSON header. */
export async function fetchRemoteSafetensorsHeader(src: RangeSource): Promise<SafetensorsHeader> {
  const prefix = await src.read(0, Math.min(8, src.size));
  const len = headerLengthFrom(prefix, src.size, src.name);
  const json = await src.read(8, len);
  return parseHeader(json, len, src.size, src.name);
}
