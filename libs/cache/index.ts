import { mkdir, stat } from 'node:fs/promises';
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
      const info = await cacache().get.info(this.dir, key);
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
      const data = await cacache().get.byDigest(this.dir, info.integrity, { size: info.size });
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
      return (await cacache().get.info(this.dir, key)) !== null;
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
