import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rename, rm, symlink, copyFile, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ModelError } from '../errors';

/**
 * The Hugging Face hub cache layout, shared with the Python tools:
 *   models--org--name/refs/<revision>        a commit sha
 *   models--org--name/snapshots/<sha>/<file>  a relative symlink to ../../blobs/<etag>
 *   models--org--name/blobs/<etag>            the bytes (etag = sha256 for LFS files, git oid otherwise)
 */
export const COMMIT_SHA = /^[0-9a-f]{40}$/;

export function repoFolderName(repoId: string): string {
  return ['models', ...repoId.split('/')].join('--');
}

/**
 * Why a name from a recipe or a hub answer cannot be a relative path inside a folder, or null when it can:
 * no absolute path, no empty, `.` or `..` segment, no backslash, NUL or other control character.
 */
export function unsafePathReason(name: string): string | null {
  if (!name) return 'it is empty';
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) return 'it holds a control character';
  if (name.includes('\\')) return 'it holds a backslash';
  if (name.startsWith('/') || isAbsolute(name) || /^[A-Za-z]:/.test(name)) return 'it is an absolute path';
  const segments = name.split('/');
  if (segments.some((p) => p === '..')) return 'it climbs out with ".."';
  if (segments.some((p) => p === '' || p === '.')) return 'it has an empty or "." path segment';
  return null;
}

/** `root/...parts`, refusing any result that is not strictly inside root (the last line of defence). */
export function pathInside(root: string, ...parts: string[]): string {
  const base = resolve(root);
  const p = resolve(base, ...parts);
  const rel = relative(base, p);
  if (!rel || rel === '..' || rel.startsWith('..' + sep) || isAbsolute(rel)) {
    throw new ModelError('unsafe_path', `refusing to use ${JSON.stringify(parts.join('/'))} as a path: it would leave ${base}`, { file: base });
  }
  return p;
}

export function repoStorage(cacheDir: string, repoId: string): string {
  return pathInside(cacheDir, repoFolderName(repoId));
}

export function snapshotDir(cacheDir: string, repoId: string, sha: string): string {
  if (!COMMIT_SHA.test(sha)) throw new ModelError('unsafe_path', `${JSON.stringify(sha)} is not a commit sha (40 hex digits)`);
  return join(repoStorage(cacheDir, repoId), 'snapshots', sha);
}

/** Where refs/<revision> lies; a revision that is no safe relative path (e.g. `../../x`) is refused. */
export function refPath(cacheDir: string, repoId: string, revision: string): string {
  const why = unsafePathReason(revision);
  if (why) throw new ModelError('bad_revision', `revision ${JSON.stringify(revision)} of ${repoId} is refused: ${why}`);
  return pathInside(join(repoStorage(cacheDir, repoId), 'refs'), revision);
}

/**
 * The commit a revision points to in the cache (a sha is its own commit), or null when the cache does not know it.
 * Synchronous (one small file): the command's first lines use it too, before the merge's code loads.
 */
export function cachedCommit(cacheDir: string, repoId: string, revision: string | null): string | null {
  const rev = revision ?? 'main';
  if (COMMIT_SHA.test(rev)) return existsSync(snapshotDir(cacheDir, repoId, rev)) ? rev : null;
  const ref = refPath(cacheDir, repoId, rev);
  try {
    const sha = readFileSync(ref, 'utf8').trim();
    return COMMIT_SHA.test(sha) ? sha : null;
  } catch {
    return null;
  }
}

export function tempSibling(path: string): string {
  return `${path}.${process.pid}-${randomBytes(4).toString('hex')}.incomplete`;
}

/** Writes refs/<revision> atomically (a reader never sees a half-written sha). */
export async function writeRef(cacheDir: string, repoId: string, revision: string, sha: string): Promise<void> {
  if (revision === sha) return;
  const ref = refPath(cacheDir, repoId, revision);
  await mkdir(dirname(ref), { recursive: true });
  const tmp = tempSibling(ref);
  await writeFile(tmp, sha);
  await rename(tmp, ref);
}

/** Points snapshots/<sha>/<file> at a blob, replacing atomically; copies where symlinks are not allowed. */
export async function linkSnapshotFile(blobPath: string, pointerPath: string): Promise<void> {
  await mkdir(dirname(pointerPath), { recursive: true });
  const tmp = tempSibling(pointerPath);
  try {
    await symlink(relative(dirname(pointerPath), blobPath), tmp);
  } catch {
    await copyFile(blobPath, tmp);
  }
  try {
    await rename(tmp, pointerPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
