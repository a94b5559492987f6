// What a merge outside Nx knows of an output folder it wrote: each file's stat key (libs/util/stat-key.js) when
// written, kept in the cache folder. The stamp in the folder gives sizes only, and sizes (with mtime) can be
// restored after a shard is damaged in place; a shard whose key changed is written again, never kept.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join, resolve } from 'node:path';
import { changedSince, recordKeys } from '../util';

function recordFile(cacheDir: string, out: string): string {
  return join(cacheDir, 'outputs', `${createHash('sha256').update(resolve(out)).digest('hex').slice(0, 32)}.json`);
}

/** Files of the output folder that changed since this cache recorded them ([] without a record: sizes decide). */
export function changedOutputFiles(cacheDir: string, out: string): string[] {
  try {
    const rec = JSON.parse(readFileSync(recordFile(cacheDir, out), 'utf8')) as { dir?: unknown; files?: unknown };
    // The record names the folder it is for: one for another path is not taken.
    if (rec.dir !== resolve(out) || !rec.files || typeof rec.files !== 'object') return [];
    return changedSince(resolve(out), rec.files as Record<string, string>);
  } catch {
    return [];
  }
}

/**
 * After a write: the folder's files as they are now (a cache that cannot be written is no record). `probe`: the
 * file system may be probed for whether it needs the racy window waited out (recordKeys).
 */
export function recordOutputFiles(cacheDir: string, out: string, names: string[], probe?: boolean): void {
  try {
    const file = recordFile(cacheDir, out);
    mkdirSync(join(file, '..'), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify({ dir: resolve(out), files: recordKeys(resolve(out), names, probe) }) + '\n');
    renameSync(tmp, file);
  } catch {
    // no record: the next merge trusts the stamp's sizes, as without one
  }
}
