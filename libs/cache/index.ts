import { resolve } from 'node:path';
import cacache from 'cacache';
import { processAlive } from '../util/process';

/**
 * The one door to cacache: content-addressed entries with integrity checks. Corrupt or truncated
 * entries read back as a miss (and are removed), so callers recompute instead of failing.
 */
export const CACHE_ENV = 'MOE_FORGE_CACHE';

export function defaultCacheDir(workspaceRoot: string = process.cwd()): string {
  return process.env[CACHE_ENV] ? resolve(process.env[CACHE_ENV]!) : resolve(workspaceRoot, '.moe-cache');
}

export class ContentCache {
  constructor(readonly dir: string) {}

  async getBuffer(key: string): Promise<Buffer | null> {
    try {
      const { data } = await cacache.get(this.dir, key);
      return data;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return null;
      if (code === 'EINTEGRITY' || code === 'EBADSIZE') {
        // Drop the bad content too: a later put of the same bytes would otherwise keep the corrupt file.
        const info = await cacache.get.info(this.dir, key).catch(() => null);
        if (info) await cacache.rm.content(this.dir, info.integrity).catch(() => undefined);
        await this.remove(key);
        return null;
      }
      throw e;
    }
  }

  async putBuffer(key: string, data: Buffer, metadata?: unknown): Promise<void> {
    await cacache.put(this.dir, key, data, { metadata });
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
    await cacache.rm.entry(this.dir, key).catch(() => undefined);
  }
}

/**
 * A cross-process lock (an atomically created folder holding the owner's pid) so that concurrent merges
 * sharing a base compute each prompt state once: the second waits, then finds the states cached.
 */
export async function withLock<T>(cacheDir: string, name: string, body: () => Promise<T>, pollMs = 100): Promise<T> {
  const { mkdir, rm, writeFile, readFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const dir = join(cacheDir, 'locks', name);
  await mkdir(join(cacheDir, 'locks'), { recursive: true });
  for (;;) {
    try {
      await mkdir(dir);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(await readFile(join(dir, 'pid'), 'utf8').catch(() => 'NaN'));
      if (Number.isInteger(pid) && !processAlive(pid)) await rm(dir, { recursive: true, force: true });
      else await new Promise((r) => setTimeout(r, pollMs));
    }
  }
  try {
    await writeFile(join(dir, 'pid'), String(process.pid));
    return await body();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

