import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as NodeReadableStream } from 'node:stream/web';
import { downloadFile, fileDownloadInfo, HubApiError, listFiles, modelInfo } from '@huggingface/hub';
import { ModelError } from '../errors';
import { headerLengthFrom, parseHeader, type SafetensorsHeader } from '../safetensors';
import type { RangeSource } from '../pickle';
import { linkSnapshotFile, repoStorage, snapshotDir, tempSibling } from './hf-cache';
import type { HubSettings } from './settings';

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

/** Network access counted per process, so tests and the CLI can report what a run fetched. */
export const hubStats = { requests: 0, bytesDownloaded: 0 };

function countingFetch(f: typeof fetch): typeof fetch {
  return ((input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]) => {
    hubStats.requests++;
    return f(input, init);
  }) as typeof fetch;
}

/** Turns hub and network failures into ModelErrors that name the reference and say what to do. */
export function hubFailure(e: unknown, refText: string, s: HubSettings, what: string): ModelError {
  if (e instanceof ModelError) return e;
  if (e instanceof HubApiError) {
    const detail = e.message.replace(/\. URL: .*$/, '');
    if (e.statusCode === 401 || e.statusCode === 403) {
      const why = s.token
        ? `the token in HF_TOKEN was refused (HTTP ${e.statusCode}); make sure it has access to this model (gated models need access granted on their page)`
        : `the hub answered HTTP ${e.statusCode}: this model is gated or private, so a Hugging Face token is needed: set HF_TOKEN to a token that has access`;
      return new ModelError('hub_auth', `cannot ${what} for model ${refText}: ${why} (${detail})`);
    }
    if (e.statusCode === 404) {
      return new ModelError('hub_not_found', `model ${refText} was not found on ${s.hubUrl} (no such repository, revision or file; it is also not a local folder) (${detail})`);
    }
    return new ModelError('hub_error', `cannot ${what} for model ${refText}: hub error HTTP ${e.statusCode} (${detail})`);
  }
  const err = e as Error & { cause?: { code?: string; message?: string } };
  if (err instanceof TypeError && /access token/i.test(err.message)) {
    return new ModelError('hub_auth', `cannot ${what} for model ${refText}: HF_TOKEN is not a Hugging Face access token (${err.message})`);
  }
  const cause = err?.cause?.code ?? err?.cause?.message ?? err?.message ?? String(e);
  return new ModelError('hub_unreachable', `cannot ${what} for model ${refText}: the hub at ${s.hubUrl} could not be reached (${cause}). Set HF_HUB_OFFLINE=1 to use only local folders and the cache`);
}

/** The commit a revision names, and its top-level files with their hashes. */
export async function remoteSnapshot(repo: string, revision: string | null, s: HubSettings, refText: string): Promise<RemoteSnapshot> {
  const fetch = countingFetch(s.fetch);
  const base = { hubUrl: s.hubUrl, fetch, accessToken: s.token };
  try {
    const info = await modelInfo({ ...base, name: repo, revision: revision ?? 'main', additionalFields: ['sha'] });
    const sha = (info as { sha?: string }).sha;
    if (!sha || !SHA1.test(sha)) throw new ModelError('hub_error', `the hub gave no commit sha for ${refText}`);
    const files = new Map<string, RemoteFile>();
    for await (const e of listFiles({ ...base, repo, revision: sha, recursive: false })) {
      if (e.type !== 'file') continue;
      const lfsOid = e.lfs?.oid ?? null;
      files.set(e.path, {
        path: e.path,
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

/**
 * Puts one file of a snapshot into the cache unless it is already there: download to a temporary name, check
 * size and hash against the hub's metadata, rename to blobs/<etag>, then link snapshots/<sha>/<file>.
 * A wrong hash leaves nothing behind. Returns the bytes downloaded (0 when cached).
 */
export async function fetchIntoCache(snap: RemoteSnapshot, file: RemoteFile, s: HubSettings, refText: string): Promise<number> {
  const pointer = join(snapshotDir(s.cacheDir, snap.repo, snap.sha), file.path);
  const have = await stat(pointer).catch(() => null);
  if (have?.isFile() && have.size === file.size) return 0;

  const fetch = countingFetch(s.fetch);
  const base = { hubUrl: s.hubUrl, fetch, accessToken: s.token, repo: snap.repo, path: file.path, revision: snap.sha };
  let info;
  try {
    info = await fileDownloadInfo(base);
  } catch (e) {
    throw hubFailure(e, refText, s, `download ${file.path}`);
  }
  if (!info) throw new ModelError('hub_not_found', `${file.path} is listed for ${refText} at ${snap.sha} but the hub does not serve it`);
  // The tree's LFS oid is the expected sha256; the X-Linked-Etag header only fills in where the tree gives none
  // (after a CDN redirect the ETag may be some other 64-hex value, e.g. a xet hash, so it never overrides the tree).
  const headerEtag = stripEtag(info.etag);
  const sha256 = file.sha256 ?? (!file.gitOid && SHA256.test(headerEtag) ? headerEtag : null);
  const gitOid = sha256 ? null : file.gitOid;
  const etag = sha256 ?? gitOid;
  if (!etag) throw new ModelError('hash_unknown', `${file.path} of ${refText}: the hub reports no hash for it, so it cannot be verified`);

  const blob = join(repoStorage(s.cacheDir, snap.repo), 'blobs', etag);
  const blobStat = await stat(blob).catch(() => null);
  if (blobStat?.isFile() && blobStat.size === file.size) {
    await linkSnapshotFile(blob, pointer);
    return 0;
  }

  await mkdir(dirname(blob), { recursive: true });
  const tmp = tempSibling(blob);
  const hash = createHash(sha256 ? 'sha256' : 'sha1');
  if (!sha256) hash.update(`blob ${file.size}\0`);
  let got = 0;
  try {
    const body = await downloadFile({ ...base, downloadInfo: info });
    if (!body) throw new ModelError('hub_not_found', `${file.path} of ${refText} disappeared from the hub during download`);
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        got += chunk.length;
        hubStats.bytesDownloaded += chunk.length;
        cb(null, chunk);
      },
    });
    await pipeline(Readable.fromWeb(body.stream() as NodeReadableStream), tap, createWriteStream(tmp, { flags: 'wx' }));
    if (got !== file.size) throw new ModelError('size_mismatch', `${file.path} of ${refText}: downloaded ${got} bytes, the hub said ${file.size}; refusing the file`);
    const actual = hash.digest('hex');
    if (actual !== etag) {
      throw new ModelError('hash_mismatch', `${file.path} of ${refText}: downloaded content has ${sha256 ? 'sha256' : 'git oid'} ${actual}, the hub said ${etag}; refusing the file (nothing was kept)`);
    }
    await rename(tmp, blob);
  } catch (e) {
    await rm(tmp, { force: true });
    throw hubFailure(e, refText, s, `download ${file.path}`);
  }
  await linkSnapshotFile(blob, pointer);
  return got;
}

/** A file on the hub read by HTTP Range requests only (headers of safetensors, the directory of a .bin zip). */
export function remoteRangeSource(snap: RemoteSnapshot, file: RemoteFile, s: HubSettings, refText: string): RangeSource {
  const fetch = countingFetch(s.fetch);
  const url = `${s.hubUrl}/${snap.repo}/resolve/${snap.sha}/${file.path.split('/').map(encodeURIComponent).join('/')}`;
  return {
    name: `${snap.repo}@${snap.sha}/${file.path}`,
    size: file.size,
    async read(offset: number, length: number): Promise<Buffer> {
      if (length === 0) return Buffer.alloc(0);
      let res: Response;
      try {
        res = await fetch(url, { headers: { Range: `bytes=${offset}-${offset + length - 1}`, ...(s.token ? { Authorization: `Bearer ${s.token}` } : {}) } });
      } catch (e) {
        throw hubFailure(e, refText, s, `read ${file.path}`);
      }
      if (res.status === 401 || res.status === 403 || res.status === 404) {
        await res.body?.cancel();
        throw hubFailure(new HubApiError(url, res.status), refText, s, `read ${file.path}`);
      }
      if (res.status !== 206) {
        // A server that ignores Range would send the whole file: stop reading at once.
        await res.body?.cancel();
        throw new ModelError('hub_no_range', `${file.path} of ${refText}: the hub answered HTTP ${res.status} to a range request; header-only validation needs range support`);
      }
      const buf = Buffer.from(await res.arrayBuffer());
      hubStats.bytesDownloaded += buf.length;
      if (buf.length !== length) throw new ModelError('hub_short_read', `${file.path} of ${refText}: asked for ${length} bytes at ${offset}, got ${buf.length}`);
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
