import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type Cacache from 'cacache';
import { processStartTime, withLockAt, type LockOptions } from '../util/lock';
export type { LockOptions };

// Loaded at first use: most stages never open the cache, and loading cacache is ~90 ms of a stage's start.
const cacache = (): typeof Cacache => require('cacache');

/**
 * The one door to cacache: content-addressed entries with integrity checks. Corrupt or truncated
 * entries read back as a miss (and are removed), so callers recompute instead of failing.
 */
export const CACHE_ENV = 'MOE_FORGE_CACHE';

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

export class ContentCache {
  constructor(
    readonly dir: string,
    private readonly warn: (line: string) => void = (line) => process.stderr.write(`WARNING: ${line}\n`),
  ) {}

  /** Warns once and reports whether the error was the cache being unusable (then the caller treats it as a miss). */
  private unusable(e: unknown): boolean {
    return cacheUnusable(this.dir, e, this.warn);
  }

  async getBuffer(key: string): Promise<Buffer | null> {
    try {
      const { data } = await cacache().get(this.dir, key);
      return data;
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

  async putBuffer(key: string, data: Buffer, metadata?: unknown): Promise<void> {
    try {
      await cacache().put(this.dir, key, data, { metadata });
    } catch (e) {
      if (!this.unusable(e)) throw e;
    }
  }

  async getJson<T>(key: string): Promise<T | null> {
    const b = await this.getBuffer(key);
    if (!b) return null;
    try {
      return JSON.parse(b.toString('utf8')) as T;
    } catch {
      await this.remove(key);
      return null;
    }
  }

  async putJson(key: string, value: unknown): Promise<void> {
    await this.putBuffer(key, Buffer.from(JSON.stringify(value), 'utf8'));
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
