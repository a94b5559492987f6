/**
 * The command's no-op, answered before the merge's code loads. After a successful merge from local model folders
 * the command records, in the cache folder, the stat key (libs/util/stat-key.js) of every file it depended on:
 * the recipe, each model folder's files, the output folder's files and the command's own bundle; and each
 * folder's list of names. The same command line in the same folder with the same environment, finding every key
 * and list unchanged, prints what the merge would print (its warnings, then "unchanged ...") without loading
 * onnxruntime, zod, yaml or cacache. Anything else (a key changed or racy when recorded, a file added or gone, a
 * damaged memo) runs the merge as always. Plain node modules only: this is the whole of build/noop.js.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileKey, folderKeys, isRacy, nowNs } from '../util';
import { userCacheDir } from '../cache';

const VERSION = 1;

/** Environment variables that can change what a merge reads or where it writes. */
const ENV_KEYS = ['MOE_FORGE_CACHE', 'XDG_CACHE_HOME', 'HF_HOME', 'HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE', 'HF_HUB_OFFLINE', 'HF_ENDPOINT', 'TMPDIR'];

/** Where the memo of one command line (arguments, working folder, environment, node) lives. */
export function memoFile(argv: string[], cwd = process.cwd(), env: NodeJS.ProcessEnv = process.env): string {
  const key = createHash('sha256')
    .update(JSON.stringify([VERSION, argv, cwd, ENV_KEYS.map((k) => env[k] ?? null), process.version]))
    .digest('hex');
  return join(userCacheDir(env), 'noop', `${key.slice(0, 40)}.json`);
}

interface Memo {
  version: number;
  files: Record<string, string>;
  dirs: Record<string, string[]>;
  warnings: string[];
  line: string;
}

/** A folder's names, sorted (null when it cannot be read). */
function names(dir: string): string[] | null {
  try {
    return readdirSync(dir).sort();
  } catch {
    return null;
  }
}

export interface Watched {
  /** Files read (their keys must not change). */
  files: string[];
  /** Folders whose names must stay the same and whose plain files' keys must not change. */
  dirs: string[];
}

/**
 * Records a merge that succeeded. Nothing is recorded when a key cannot be taken or is racy (a file written
 * within the clock's granularity of now could change again unseen), or when the cache cannot be written.
 */
export function recordNoop(file: string, watched: Watched, warnings: string[], line: string): void {
  try {
    const at = nowNs();
    const memo: Memo = { version: VERSION, files: {}, dirs: {}, warnings, line };
    const take = (p: string): boolean => {
      const k = fileKey(p);
      if (k === null || isRacy(k, at)) return false;
      memo.files[p] = k;
      return true;
    };
    for (const f of watched.files) if (!take(resolve(f))) return;
    for (const d of watched.dirs.map((x) => resolve(x))) {
      // Plain files (symlinks followed); a sub-folder's name is in the list, its contents are not read by a merge.
      const seen = folderKeys(d, at);
      if (seen === null || seen.racy) return;
      memo.dirs[d] = seen.names;
      for (const [n, k] of Object.entries(seen.files)) memo.files[join(d, n)] = k;
    }
    mkdirSync(join(file, '..'), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(memo) + '\n');
    renameSync(tmp, file);
  } catch {
    // no memo: the next run merges as always
  }
}

const isStringArray = (x: unknown): x is string[] => Array.isArray(x) && x.every((s) => typeof s === 'string');

/** What to print when the memo for this command line holds (every key and list unchanged), else null. */
export function checkNoop(file: string): { warnings: string[]; line: string } | null {
  let memo: unknown;
  try {
    memo = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
  // Written by us or not, damaged or not: only a memo of the expected shape is read further.
  const m = memo as Partial<Memo> | null;
  if (!m || m.version !== VERSION || typeof m.line !== 'string' || !isStringArray(m.warnings)) return null;
  if (!m.files || typeof m.files !== 'object' || !m.dirs || typeof m.dirs !== 'object') return null;
  const files = Object.entries(m.files);
  if (files.length === 0) return null;
  for (const [p, k] of files) if (typeof k !== 'string' || fileKey(p) !== k) return null;
  for (const [d, list] of Object.entries(m.dirs)) {
    if (!isStringArray(list)) return null;
    const now = names(d);
    if (now === null || now.length !== list.length || now.some((n, i) => n !== list[i])) return null;
  }
  return { warnings: m.warnings, line: m.line };
}
