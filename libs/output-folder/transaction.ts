import { closeSync, existsSync, lstatSync, openSync, readSync, readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, rmSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import { isPlainFileName } from '../util';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { ForgeError } from '../errors';
import { leftByDeadProcess } from '../util';
import { inUse } from '../util';
import { acquireLockAt } from '../util';
import { isOurWorkFolder, markWorkFolder, WORK_MARKER } from '../util';

/**
 * The output folder's lifecycle: where it really is (symlinks written through), what it must never be
 * (an input, or a file), what a killed run left next to it, and the swap that keeps files a user added.
 */

export const STAMP_FILE = '.moe-forge.json';
/** The lock serialising writers of one output folder, inside it when the output is a mount point. */
export const OUTPUT_LOCK = '.moe-forge.lock';

export interface OutputInput {
  /** What the path is, for the message: "base model x", "recipe". */
  label: string;
  path: string;
}

const inside = (child: string, parent: string) => child === parent || child.startsWith(parent.endsWith(sep) ? parent : parent + sep);

/** The path with every symlink resolved, including a final link whose target does not exist yet. */
export function realOutputPath(out: string): string {
  let p = resolve(out);
  for (let hops = 0; hops < 40; hops++) {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      // Not there: resolve the deepest existing folder above it and keep the rest as written.
      const parent = dirname(p);
      return parent === p ? p : join(realOutputPath(parent), basename(p));
    }
    if (!st.isSymbolicLink()) return realpathSync(p);
    const link = readlinkSync(p);
    p = isAbsolute(link) ? link : resolve(dirname(p), link);
  }
  throw new ForgeError('output_path', 'output path is a loop of symbolic links', { file: out });
}

/** What a run writes besides the model folder, checked with it before any work. */
export interface OtherWrites {
  /** Files written whole (the routing report's .html and .json): `label` names the option. */
  files?: { path: string; label: string }[];
  /** Folders we write into (the prompt-state and content-id cache, Nx's stage outputs): `label` says which. */
  caches?: { path: string; label: string }[];
  /** An existing file at `files` that we did not write is replaced only with --overwrite. */
  overwrite?: boolean;
}

/**
 * Refuses, even with --overwrite, an output path that is a file, lies under a file, or is or contains an
 * input (a model folder, a file a model folder links to, the recipe) or the cache: replacing it would destroy
 * that. Every other path the run writes (`other`) is checked against the same inputs and the output folder.
 * Returns the real folder to write (a symlinked output is written through, so the link survives).
 */
export function checkOutputPath(out: string, inputs: OutputInput[], other: OtherWrites = {}): string {
  for (let p = resolve(out); ; p = dirname(p)) {
    let st;
    try {
      st = statSync(p);
    } catch (e) {
      // Not there (ENOTDIR: an ancestor is a file, found further up).
      if (!['ENOENT', 'ENOTDIR'].includes((e as NodeJS.ErrnoException).code ?? '')) throw e;
    }
    if (st && !st.isDirectory()) {
      throw new ForgeError('output_path', p === resolve(out) ? 'output path is a file, not a folder' : `output path ${out} lies under ${p}, which is a file`, { file: p === resolve(out) ? out : p });
    }
    if (st || dirname(p) === p) break;
  }
  const real = realOutputPath(out);
  const caches = other.caches ?? [];
  for (const input of [...inputs, ...caches]) {
    for (const p of inputPaths(input.path)) {
      if (inside(p, real)) {
        const what = p === real ? 'is' : 'contains';
        throw new ForgeError('output_is_input', `output path ${what} the ${input.label} (${input.path}); writing there would destroy it, so it is refused even with --overwrite: choose another output folder`, { file: out });
      }
    }
  }
  for (const c of caches) {
    const rc = realOutputPath(c.path);
    if (inside(rc, real)) throw new ForgeError('cache_in_output', `the ${c.label} ${c.path} lies inside the output folder, which a rebuild replaces: choose a folder outside it`, { file: c.path });
    for (const input of inputs) if (isFolder(input.path) && inside(rc, realOutputPath(input.path))) throw new ForgeError('cache_in_model', `the ${c.label} ${c.path} lies inside the ${input.label} (${input.path}); input folders are never written to`, { file: c.path });
  }
  for (const f of other.files ?? []) checkOtherFile(f, real, [...inputs, ...caches], other.overwrite ?? false);
  return real;
}

const isFolder = (p: string) => {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
};

/** Text that starts every file of a kind we write besides the model folder: proof that replacing it loses nothing. */
// routing.json of any version we wrote (its first keys), or routing.html.
const OUR_FILE_STARTS = [/^\{"version":\d+,"name":/, /^<!DOCTYPE html>\n(?:.*\n){0,6}<title>Routing report: /];

function writtenByUs(p: string): boolean {
  try {
    const st = lstatSync(p);
    if (!st.isFile()) return false;
    const fd = openSync(p, 'r');
    try {
      const head = Buffer.alloc(1024);
      const n = readSync(fd, head, 0, head.length, 0);
      const text = head.subarray(0, n).toString('utf8');
      return OUR_FILE_STARTS.some((re) => re.test(text));
    } finally {
      closeSync(fd);
    }
  } catch {
    return false;
  }
}

/** A file written besides the model folder (`--report`): never an input, never inside an input, the output or a cache. */
function checkOtherFile(f: { path: string; label: string }, out: string, inputs: OutputInput[], overwrite: boolean): void {
  const real = realOutputPath(f.path);
  if (inside(real, out)) throw new ForgeError('write_in_output', `${f.path} lies inside the output folder ${out}, where it would take the place of the model's own files (the folder gets routing.html anyway): choose a path outside it`, { file: f.path, field: f.label });
  for (const input of inputs) {
    for (const p of inputPaths(input.path)) {
      if (p === real || inside(real, p)) {
        throw new ForgeError('write_is_input', `${f.path} ${p === real ? 'is' : 'lies inside'} the ${input.label} (${input.path}); writing there would destroy it: choose another path`, { file: f.path, field: f.label });
      }
    }
  }
  if (isFolder(real)) throw new ForgeError('write_is_folder', `${f.path} is a folder; expected a file name`, { file: f.path, field: f.label });
  if (existsSync(real) && !overwrite && !writtenByUs(real)) {
    throw new ForgeError('write_exists', `${f.path} exists and is not a routing report moe-forge wrote; move it away or pass --overwrite to replace it`, { file: f.path, field: f.label });
  }
}

/** An input's real path, and for a folder the real paths of its entries (a Hub snapshot links into blobs/). */
function inputPaths(p: string): string[] {
  let real: string;
  try {
    real = realpathSync(p);
  } catch {
    return [resolve(p)];
  }
  const out = [real];
  if (statSync(real).isDirectory()) {
    for (const e of readdirSync(real)) {
      try {
        if (lstatSync(join(real, e)).isSymbolicLink()) out.push(realpathSync(join(real, e)));
      } catch {
        // a dangling link points nowhere we could overwrite
      }
    }
  }
  return out;
}

export interface Stamp {
  tool: 'moe-forge';
  hash: string;
  files: Record<string, number>;
  /** Per shard file: a hash of its planned content, so an unchanged shard is kept on a re-plan. */
  shards?: Record<string, string>;
  /** The recipe that owns the folder, relative to the folder: a second recipe writing here is an error. */
  recipe?: string;
}

/**
 * A name read from a stamp, an index or a plan, used as a path in `dir`: it must be a plain file name there.
 * Anything else (`../x`, `a/b`, an absolute path) is refused, never followed.
 */
export function plainFileName(name: unknown, file: string, field: string): string {
  if (!isPlainFileName(name)) {
    throw new ForgeError('bad_name', `${JSON.stringify(name)} is not a plain file name inside the folder; refused (the file may be damaged or written by someone else)`, { file, field });
  }
  return name;
}

/**
 * The stamp of a folder we wrote, or null when it has none or an unreadable one (then the folder is not known
 * to be ours). A readable stamp naming a file outside the folder is refused: its names are used as paths.
 */
export function readStampSync(dir: string): Stamp | null {
  const file = join(dir, STAMP_FILE);
  let s: Stamp;
  try {
    const st = lstatSync(file);
    // A link or a huge file is not a stamp we wrote.
    if (!st.isFile() || st.size > 64 << 20) return null;
    s = JSON.parse(readFileSync(file, 'utf8')) as Stamp;
  } catch {
    return null;
  }
  if (!s || s.tool !== 'moe-forge' || !s.files || typeof s.files !== 'object' || Array.isArray(s.files)) return null;
  for (const [name, size] of Object.entries(s.files)) {
    plainFileName(name, file, 'files');
    if (!Number.isSafeInteger(size) || size < 0) throw new ForgeError('bad_stamp', `the size of ${JSON.stringify(name)} must be a byte count, got ${JSON.stringify(size)}`, { file, field: 'files' });
  }
  if (s.shards !== undefined) {
    if (!s.shards || typeof s.shards !== 'object' || Array.isArray(s.shards)) throw new ForgeError('bad_stamp', 'expected an object mapping shard files to content hashes', { file, field: 'shards' });
    for (const [name, h] of Object.entries(s.shards)) {
      plainFileName(name, file, 'shards');
      if (typeof h !== 'string') throw new ForgeError('bad_stamp', `the hash of ${JSON.stringify(name)} must be a string`, { file, field: 'shards' });
    }
  }
  if (s.recipe !== undefined && typeof s.recipe !== 'string') throw new ForgeError('bad_stamp', 'expected the owning recipe\'s path as a string', { file, field: 'recipe' });
  return s;
}

/** The stamp's `recipe`: where the recipe lies, relative to the (real) output folder. */
export function ownerField(out: string, recipeFile: string): string {
  return relative(out, realpathOr(recipeFile)).split(sep).join('/');
}

const realpathOr = (p: string) => {
  try {
    return realpathSync(p);
  } catch {
    return resolve(p);
  }
};

/**
 * Two recipes with one output folder would replace each other's model on every build, each run a success: the
 * stamp names the recipe that wrote the folder, and another recipe is refused while that one still exists
 * (a recipe that was moved or deleted leaves the folder to its successor). `overwrite` hands the folder over.
 */
export function checkOwner(out: string, stamp: Stamp | null, recipeFile: string | undefined, overwrite: boolean, log?: (line: string) => void): void {
  if (!stamp?.recipe || !recipeFile) return;
  const owner = resolve(out, stamp.recipe);
  if (!existsSync(owner) || realpathOr(owner) === realpathOr(recipeFile)) return;
  try {
    const [a, b] = [statSync(owner), statSync(recipeFile)];
    if (a.dev === b.dev && a.ino === b.ino) return; // the same file under two names (a hard link)
  } catch {
    // compare by path only
  }
  if (overwrite) {
    log?.(`output folder ${out} was written by recipe ${owner}; --overwrite hands it to ${recipeFile}`);
    return;
  }
  throw new ForgeError('output_owned', `output folder ${out} was written by recipe ${owner}, and recipe ${recipeFile} would replace it (two recipes sharing a folder overwrite each other on every build): give each recipe its own output folder, or pass --overwrite to hand this one over`, { file: out });
}

/** Our work folder inside an output that is a mount point (see `replaceInPlace`). */
const IN_PLACE_TMP = /^\.moe-forge\.tmp-(\d+)-[0-9a-f]+$/;
export const inPlaceTempName = (out: string, tag: string) => join(out, `.moe-forge.tmp-${process.pid}-${tag}`);

/** Entries that are neither the user's nor a model's: our stamp and work folders, a file system's lost+found. */
const notContent = (e: string) => e === STAMP_FILE || e === WORK_MARKER || e === OUTPUT_LOCK || e.startsWith(`.${OUTPUT_LOCK}.`) || IN_PLACE_TMP.test(e) || e === 'lost+found';

/** What a folder holds besides our bookkeeping (an empty volume's lost+found counts as empty). */
export function contentEntries(dir: string): string[] {
  return readdirSync(dir).filter((e) => !notContent(e));
}

/** Entries of a folder we wrote that are not ours: the user added them and they must survive a rebuild. */
export function userEntries(dir: string, stamp: Stamp): string[] {
  return readdirSync(dir).filter((e) => !notContent(e) && !(e in stamp.files));
}

/** Mount points, from /proc/self/mountinfo (Linux; its field 5, with spaces and the like octal-escaped). */
function mountPoints(): Set<string> | null {
  try {
    const text = readFileSync('/proc/self/mountinfo', 'utf8');
    return new Set(text.split('\n').filter(Boolean).map((l) => l.split(' ')[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))));
  } catch {
    return null;
  }
}

/**
 * Whether the (real) folder is a mount point: a volume mounted at the output path (a Docker `-v host:/out`, a
 * dedicated disk) cannot be renamed, so the output is replaced inside it. A bind mount of a folder on the same
 * device shows only in mountinfo; elsewhere a device change from the parent tells.
 */
export function isMountPoint(dir: string): boolean {
  if (dirname(dir) === dir) return true;
  const mounts = mountPoints();
  if (mounts?.has(dir)) return true;
  try {
    return statSync(dir).dev !== statSync(dirname(dir)).dev;
  } catch {
    return false;
  }
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export const tempName = (out: string, kind: 'tmp' | 'old', tag: string) => join(dirname(out), `.${basename(out)}.${kind}-${process.pid}-${tag}`);

/**
 * What a killed run left beside the output (its process is gone): a half-written `.tmp-` folder is removed;
 * an `.old-` folder (a swap cut short) is put back when the output is missing, else the files a user had
 * added are moved into the output and the rest removed. Runs before anything else, even an unchanged output.
 * Only folders holding our marker (see work-folder.ts) are touched: a name that looks like ours is not proof.
 */
export function recoverStaleTemporaries(out: string, log?: (line: string) => void): void {
  const parent = dirname(out);
  if (!existsSync(parent)) return;
  const pattern = new RegExp(`^\\.${escape(basename(out))}\\.(tmp|old)-(\\d+)-[0-9a-f]+$`);
  const outIsFolder = existsSync(out) && lstatSync(out).isDirectory();
  if (outIsFolder) {
    // Work folders of the in-place mode (the output is a mount point), left by a run that was stopped.
    for (const entry of readdirSync(out)) {
      const m = IN_PLACE_TMP.exec(entry);
      const p = join(out, entry);
      if (!m || !isOurWorkFolder(p, Number(m[1])) || !leftByDeadProcess(Number(m[1]), p, inUse)) continue;
      rmSync(p, { recursive: true, force: true });
      log?.(`removed ${p}, left by a run that was stopped`);
    }
  }
  for (const entry of readdirSync(parent)) {
    const m = pattern.exec(entry);
    const p = join(parent, entry);
    if (!m || !isOurWorkFolder(p, Number(m[2])) || !leftByDeadProcess(Number(m[2]), p, inUse)) continue;
    if (m[1] === 'tmp') {
      rmSync(p, { recursive: true, force: true });
      log?.(`removed ${p}, left by a run that was stopped`);
      continue;
    }
    if (!existsSync(out)) {
      renameSync(p, out);
      rmSync(join(out, WORK_MARKER), { force: true });
      log?.(`restored ${out} from ${p}, left by a run that was stopped while replacing it`);
      continue;
    }
    const stamp = readStampSync(p);
    if (stamp) for (const e of userEntries(p, stamp)) if (!existsSync(join(out, e))) renameSync(join(p, e), join(out, e));
    rmSync(p, { recursive: true, force: true });
    log?.(`finished replacing ${out} (a run was stopped while replacing it)`);
  }
}

/**
 * Puts a complete `tmp` folder in place of `out` with synchronous renames (no signal handler runs in
 * between). Files a user added to an output we wrote earlier are moved into the new folder; a folder we
 * did not write is replaced whole (the caller only gets here for it with --overwrite).
 */
export function swapIntoPlace(tmp: string, out: string, tag: string, keep: string[]): void {
  if (!existsSync(out)) {
    renameSync(tmp, out);
    rmSync(join(out, WORK_MARKER), { force: true });
    return;
  }
  const old = tempName(out, 'old', tag);
  // The marker goes in first, so the folder is provably ours under its `.old-` name from its first moment there.
  markWorkFolder(out, basename(old));
  renameSync(out, old);
  renameSync(tmp, out);
  rmSync(join(out, WORK_MARKER), { force: true });
  for (const e of keep) if (!existsSync(join(out, e))) renameSync(join(old, e), join(out, e));
  rmSync(old, { recursive: true, force: true });
}

/**
 * The swap for an output that is a mount point, where the folder itself cannot be renamed: the new files,
 * written in a work folder inside it, replace ours one rename at a time. First the stamp is rewritten as
 * unfinished (naming old and new files, so a stopped swap is recognised as ours and redone by the next run,
 * never taken as complete), then files we wrote before and no longer write are removed, the new files moved
 * in (config.json last), and the finished stamp put in place. Entries we did not write are never touched.
 */
export function replaceInPlace(tmp: string, out: string, old: Stamp | null, stamp: Stamp): void {
  const unfinished: Stamp = { tool: 'moe-forge', hash: 'unfinished', files: { ...(old?.files ?? {}), ...stamp.files } };
  const stampTmp = join(tmp, `${STAMP_FILE}.unfinished`);
  writeFileSync(stampTmp, JSON.stringify(unfinished));
  renameSync(stampTmp, join(out, STAMP_FILE));
  for (const f of Object.keys(old?.files ?? {})) if (!(f in stamp.files)) rmSync(join(out, f), { force: true });
  const names = Object.keys(stamp.files).sort((a, b) => Number(a === 'config.json') - Number(b === 'config.json') || (a < b ? -1 : 1));
  for (const f of names) renameSync(join(tmp, f), join(out, f));
  renameSync(join(tmp, STAMP_FILE), join(out, STAMP_FILE));
  // A kept shard was hard-linked into the work folder: renaming a link onto its own file leaves the link.
  rmSync(tmp, { recursive: true, force: true });
}

const gb = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`);

/** The mount point holding `dir` (the last folder above it on the same device), to say which disk is full. */
function mountOf(dir: string): string {
  const dev = statSync(dir).dev;
  let p = dir;
  while (dirname(p) !== p && statSync(dirname(p)).dev === dev) p = dirname(p);
  return p;
}

/** Refuses before writing when the disk holding `dir` has less free space than the output needs. */
export function checkFreeSpace(dir: string, needed: number): void {
  const fs = statfsSync(dir);
  const free = Number(fs.bavail) * Number(fs.bsize);
  if (needed > free) {
    throw new ForgeError('no_space', `not enough free space for the output on the disk mounted at ${mountOf(dir)}: ${gb(needed)} needed, ${gb(free)} free`, { file: dir });
  }
}

/** A write that ran out of space anyway (another writer filled the disk): one line naming disk and size. */
export function noSpaceError(e: unknown, dir: string, needed: number): ForgeError | null {
  if ((e as NodeJS.ErrnoException)?.code !== 'ENOSPC') return null;
  let free = '';
  try {
    const fs = statfsSync(dir);
    free = `, ${gb(Number(fs.bavail) * Number(fs.bsize))} free now`;
  } catch {
    // the message is still right without the free space
  }
  return new ForgeError('no_space', `the disk mounted at ${mountOf(dir)} is full: the output needs ${gb(needed)}${free}; nothing was replaced`, { file: dir });
}

/**
 * Serialises writers of one output folder (two runs, or two recipes, at once): the lock lies beside the folder,
 * or inside it when it is a mount point (its parent may not be ours to write). Resolves once held, with the
 * function that releases it.
 */
export async function lockOutput(out: string, warn?: (line: string) => void): Promise<() => Promise<void>> {
  const path = existsSync(out) && isMountPoint(out) ? join(out, OUTPUT_LOCK) : join(dirname(out), `.${basename(out)}.lock`);
  // No onUnusable: a folder where no lock can be made is no folder to write the model in either.
  return (await acquireLockAt(path, { purpose: `writing the output folder ${out}`, warn, log: warn }))!;
}
