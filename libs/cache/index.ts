import { createHash } from 'node:crypto';
import { mkdir, open, readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import type Cacache from 'cacache';
import { processStartTime, withLockAt, type LockOptions } from '../util';
export type { LockOptions };

// Loaded at first use: most stages never open the cache, and loading cacache is ~90 ms of a stage's start.
const cacache = (): typeof Cacache => require('cacache');

/**
 * The one door to cacache: content-addressed entries with integrity checks. Corrupt or truncated
 * entries read back as a miss (and are removed), so callers recompute instead of failing.
 */
export const CACHE_ENV = 'MOE_FORGE_CACHE';

/** The command's cache folder: $MOE_FORGE_CACHE, else moe-forge in the XDG cache folder. */
export function userCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env[CACHE_ENV]) return resolve(env[CACHE_ENV]!);
  // As the XDG spec says: an empty or relative XDG_CACHE_HOME is ignored (never a cache in the working directory).
  const xdg = env.XDG_CACHE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.cache'), 'moe-forge');
}

export function defaultCacheDir(workspaceRoot: string = process.cwd()): string {
  return process.env[CACHE_ENV] ? resolve(process.env[CACHE_ENV]!) : resolve(workspaceRoot, '.moe-cache');
}

/** Errors that make the cache folder unusable (not a folder, full, read-only): the merge goes on without it. */
const UNUSABLE = new Set(['ENOTDIR', 'EEXIST', 'ENOSPC', 'EACCES', 'EPERM', 'EROFS', 'EDQUOT', 'EISDIR']);

const warnedDirs = new Set<string>();

/** Whether an error means the cache folder is unusable; the first time per folder, says so (the merge goes on). */
function cacheUnusable(dir: string, e: unknown, warn?: (line: string) => void): boolean {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  if (!UNUSABLE.has(code)) return false;
  if (!warnedDirs.has(dir)) {
    warnedDirs.add(dir);
    const why = (e as Error).message.replace(/^[A-Z]+: /, '').split(',')[0];
    warn?.(`the cache ${dir} cannot be used (${code}: ${why}); going on without it, so prompt states are recomputed`);
  }
  return true;
}

/** An index entry as cacache's get.info gives it; `sha512`: its content's digest (base64) where that is all its integrity names. */
interface EntryInfo {
  integrity: string;
  size: number;
  path: string;
  sha512: string | null;
}

const ENTRY_CODE = (code: string, message: string) => Object.assign(new Error(message), { code });

/**
 * cacache's layout on disk (its cache-version: index 5, content 2), read here without loading cacache for the reads
 * a command makes first: loading it took ~30 ms before the forward worker got its prompts. As cacache reads a
 * bucket: each line `sha1(json)<TAB>json`, lines whose hash does not match skipped, the key's last entry wins and
 * one without integrity is a deletion. An entry this does not know (another hash, no size) is cacache's to read.
 */
async function entryInfo(dir: string, key: string): Promise<EntryInfo | null> {
  const hashed = createHash('sha256').update(key).digest('hex');
  let text: string;
  try {
    text = await readFile(join(dir, 'index-v5', hashed.slice(0, 2), hashed.slice(2, 4), hashed.slice(4)), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  let last: { integrity?: unknown; size?: unknown } | null = null;
  for (const line of text.split('\n')) {
    const tab = line.indexOf('\t');
    if (tab < 0) continue;
    const json = line.slice(tab + 1);
    if (createHash('sha1').update(json).digest('hex') !== line.slice(0, tab)) continue;
    try {
      const e = JSON.parse(json) as { key?: unknown; integrity?: unknown; size?: unknown };
      if (e && e.key === key) last = e;
    } catch {
      // as cacache: a line that is not JSON is skipped
    }
  }
  if (!last?.integrity) return null;
  const sri = typeof last.integrity === 'string' ? /^sha512-([A-Za-z0-9+/]{86}==)$/.exec(last.integrity) : null;
  if (!sri || typeof last.size !== 'number') {
    const info = await cacache().get.info(dir, key);
    return info && { integrity: info.integrity, size: info.size ?? -1, path: info.path, sha512: null }; // no size: read as damaged
  }
  const hex = Buffer.from(sri[1]!, 'base64').toString('hex');
  return { integrity: last.integrity as string, size: last.size, path: join(dir, 'content-v2', 'sha512', hex.slice(0, 2), hex.slice(2, 4), hex.slice(4)), sha512: sri[1]! };
}

/**
 * An entry's content, checked as cacache checks it: its size, then its digest. Read so that byte `alignAt` lies on
 * a multiple of 4 in its memory: a bound entry's float data then needs no copy to be viewed as floats.
 */
async function entryData(dir: string, info: EntryInfo, alignAt = 0): Promise<Buffer> {
  if (info.sha512 === null) return cacache().get.byDigest(dir, info.integrity, { size: info.size });
  const data = await readWhole(info.path, info.size, (4 - (alignAt % 4)) % 4);
  if (data.length !== info.size) throw ENTRY_CODE('EBADSIZE', `cache content ${info.path}: ${data.length} bytes, its entry says ${info.size}`);
  if (createHash('sha512').update(data).digest('base64') !== info.sha512) throw ENTRY_CODE('EINTEGRITY', `cache content ${info.path} does not match its integrity`);
  return data;
}

/** A file's bytes (`size` expected: fewer or more is read as such) placed `offset` bytes into a buffer of its own. */
async function readWhole(path: string, size: number, offset: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.from(new ArrayBuffer(offset + size + 1), offset, size + 1);
    let got = 0;
    for (let n; got < buf.length && (n = (await fh.read(buf, got, buf.length - got, got)).bytesRead) > 0; ) got += n;
    return buf.subarray(0, got);
  } finally {
    await fh.close();
  }
}

/** What a bound entry starts with: its key material, length-prefixed, then the data. */
function boundHead(material: unknown): Buffer {
  const json = Buffer.from(JSON.stringify(material), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(json.length);
  return Buffer.concat([len, json]);
}

export class ContentCache {
  constructor(
    readonly dir: string,
    private readonly warn: (line: string) => void = (line) => process.stderr.write(`WARNING: ${line}\n`),
    /**
     * `recompute`: every read is a miss (what is computed is still stored, refreshing the entries). `quiet`: for
     * guesses, an unusable cache reads as a miss without the warning, left to the stage that uses it (it is said once).
     */
    private readonly opts: { recompute?: boolean; quiet?: boolean } = {},
  ) {}

  /** Warns once and reports whether the error was the cache being unusable (then the caller treats it as a miss). */
  private unusable(e: unknown): boolean {
    if (this.opts.quiet) return UNUSABLE.has((e as NodeJS.ErrnoException).code ?? '');
    return cacheUnusable(this.dir, e, this.warn);
  }

  /**
   * An entry bound to what it claims to be: `material` (everything its key was derived from) is stored inside the
   * content, which cacache's integrity covers, and compared on read, so an index line pointing at another entry's
   * content reads as a miss. The entry's size is checked (index and file) against `maxDataBytes` before a byte is
   * read: a cache is an input another process may have written. Every read from the cache goes through here.
   */
  async getBound(key: string, material: unknown, maxDataBytes: number): Promise<Buffer | null> {
    if (this.opts.recompute) return null;
    const head = boundHead(material);
    const max = head.length + maxDataBytes;
    try {
      const info = await entryInfo(this.dir, key);
      if (!info) return null;
      const onDisk = await stat(info.path).then((s) => s.size, () => null);
      if (onDisk === null) {
        await this.remove(key);
        return null;
      }
      if (onDisk !== info.size) {
        // The content file is not what its integrity names: damaged for every key that points at it.
        await cacache().rm.content(this.dir, info.integrity).catch(() => undefined);
        await this.remove(key);
        return null;
      }
      if (info.size > max) {
        await this.remove(key);
        return null;
      }
      const data = await entryData(this.dir, info, head.length);
      if (data.length > max || data.length < head.length || !data.subarray(0, head.length).equals(head)) {
        await this.remove(key);
        return null;
      }
      return data.subarray(head.length);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return null;
      if (code === 'EINTEGRITY' || code === 'EBADSIZE') {
        // Drop the bad content too: a later put of the same bytes would otherwise keep the corrupt file.
        const info = await cacache().get.info(this.dir, key).catch(() => null);
        if (info) await cacache().rm.content(this.dir, info.integrity).catch(() => undefined);
        await this.remove(key);
        return null;
      }
      if (this.unusable(e)) return null;
      throw e;
    }
  }

  /**
   * Whether the index names an entry for `key`, its content neither read nor checked: for guesses only (a bad
   * entry reads as a miss later, through getBound). False under `recompute` and where the cache cannot be used.
   */
  async mayHave(key: string): Promise<boolean> {
    if (this.opts.recompute) return false;
    try {
      return (await entryInfo(this.dir, key)) !== null;
    } catch {
      return false;
    }
  }

  async putBound(key: string, material: unknown, data: Buffer): Promise<void> {
    try {
      await cacache().put(this.dir, key, Buffer.concat([boundHead(material), data]));
    } catch (e) {
      if (!this.unusable(e)) throw e;
    }
  }

  async getBoundJson<T>(key: string, material: unknown, maxBytes: number): Promise<T | null> {
    const b = await this.getBound(key, material, maxBytes);
    if (!b) return null;
    try {
      return JSON.parse(b.toString('utf8')) as T;
    } catch {
      await this.remove(key);
      return null;
    }
  }

  async putBoundJson(key: string, material: unknown, value: unknown): Promise<void> {
    await this.putBound(key, material, Buffer.from(JSON.stringify(value), 'utf8'));
  }

  async remove(key: string): Promise<void> {
    await cacache().rm.entry(this.dir, key).catch(() => undefined);
  }
}

export { processStartTime };

/**
 * A cross-process lock so that concurrent merges sharing a base compute each prompt state once: the second
 * waits (saying for what), then finds the states cached. A cache folder that cannot hold locks (a file, a full
 * or read-only disk) means running unlocked, with a warning.
 */
export async function withLock<T>(cacheDir: string, name: string, body: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const locks = join(cacheDir, 'locks');
  try {
    await mkdir(locks, { recursive: true });
  } catch (e) {
    if (!cacheUnusable(cacheDir, e, opts.warn ?? opts.log)) throw e;
    return body();
  }
  return withLockAt(join(locks, name), body, { purpose: 'computing prompt states of the same base', ...opts, onUnusable: (e) => cacheUnusable(cacheDir, e, opts.warn ?? opts.log) });
}
