import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, symlink, copyFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { randomBytes } from 'node:crypto';

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

export function repoStorage(cacheDir: string, repoId: string): string {
  return join(cacheDir, repoFolderName(repoId));
}

export function snapshotDir(cacheDir: string, repoId: string, sha: string): string {
  return join(repoStorage(cacheDir, repoId), 'snapshots', sha);
}

/** The commit a revision points to in the cache (a sha is its own commit), or null when the cache does not know it. */
export async function cachedCommit(cacheDir: string, repoId: string, revision: string | null): Promise<string | null> {
  const rev = revision ?? 'main';
  if (COMMIT_SHA.test(rev)) return existsSync(snapshotDir(cacheDir, repoId, rev)) ? rev : null;
  try {
    const sha = (await readFile(join(repoStorage(cacheDir, repoId), 'refs', rev), 'utf8')).trim();
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
  const ref = join(repoStorage(cacheDir, repoId), 'refs', revision);
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
