import { readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, rename, rm, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { processAlive } from './process';
import { removeOnExit } from './cleanup';

/** Who holds a lock: enough to tell, on this machine, whether that very process still runs. */
interface LockOwner {
  pid: number;
  host: string;
  /** Linux boot id: a pid from before a reboot means nothing. */
  boot: string | null;
  /** The process's start time (clock ticks since boot): a reused pid has another. */
  start: string | null;
  since: number;
}

function bootId(): string | null {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return null;
  }
}

/** Field 22 of /proc/PID/stat (after the command name, which may hold spaces and parentheses). */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** The owner a lock folder names, or null (absent, unreadable). */
function lockOwner(dir: string): LockOwner | null {
  try {
    return JSON.parse(readFileSync(join(dir, 'owner.json'), 'utf8')) as LockOwner;
  } catch {
    return null;
  }
}

function ownerOf(pid: number): LockOwner {
  return { pid, host: hostname(), boot: bootId(), start: processStartTime(pid), since: Date.now() };
}

export interface LockOptions {
  pollMs?: number;
  /** A lock whose owner cannot be checked (another machine) is stale when not refreshed for this long. */
  staleMs?: number;
  /** Said when a stale lock is reclaimed. */
  log?: (line: string) => void;
  /** Said once when the lock is held by a live process (so a wait is never silent). */
  warn?: (line: string) => void;
}

export interface LockAtOptions extends LockOptions {
  /** What the holder is doing, for the waiting message. */
  purpose: string;
  /** A lock that cannot be made for this error (a read-only disk): true runs the body unlocked, else it throws. */
  onUnusable?: (e: unknown) => boolean;
}

/** Why a held lock is not held by a live process any more, or null while it is. */
function staleReason(dir: string, staleMs: number): string | null {
  const file = join(dir, 'owner.json');
  let owner: LockOwner | null = null;
  let age: number;
  try {
    owner = JSON.parse(readFileSync(file, 'utf8')) as LockOwner;
    age = Date.now() - statSync(file).mtimeMs;
  } catch {
    // No owner: left by a version that wrote it after creating the folder, or by a crash in between.
    try {
      age = Date.now() - statSync(dir).mtimeMs;
    } catch {
      return 'gone';
    }
    return age > 2000 ? 'it names no owner' : null;
  }
  if (!owner || !Number.isInteger(owner.pid)) return 'it names no owner';
  if (owner.host === hostname() && owner.boot === bootId()) {
    if (!processAlive(owner.pid)) return `process ${owner.pid} is gone`;
    if (owner.start !== null && processStartTime(owner.pid) !== owner.start) return `pid ${owner.pid} now belongs to another process`;
    return null;
  }
  return age > staleMs ? `its owner on ${owner.host} has not refreshed it for ${Math.round(age / 1000)} s` : null;
}

/**
 * Takes a cross-process lock at the folder `dir` (its parent must exist) and resolves with the function that
 * releases it, or with null when the lock cannot be made and `onUnusable` says to go on without it. The lock folder
 * appears complete with its owner (renamed into place), is refreshed while held, and is reclaimed as soon as its
 * owner is known dead, its pid reused, or (owner on another machine) it goes unrefreshed. A waiter says once what
 * it waits for.
 */
export async function acquireLockAt(dir: string, opts: LockAtOptions): Promise<(() => Promise<void>) | null> {
  const pollMs = opts.pollMs ?? 100;
  const staleMs = opts.staleMs ?? 30_000;
  const parent = dirname(dir);
  const name = basename(dir);
  let told = false;
  const me = ownerOf(process.pid);
  // Registered before the rename: a signal while it is queued behind other file work must not leave the lock. At
  // exit it is removed only if it names this process (the rename may not have run, and another may hold it).
  const forget = removeOnExit(dir, () => lockOwner(dir)?.pid === me.pid && lockOwner(dir)?.since === me.since);
  for (;;) {
    const staging = join(parent, `.${name}.${process.pid}-${randomBytes(4).toString('hex')}`);
    const forgetStaging = removeOnExit(staging);
    try {
      await mkdir(staging);
      await writeFile(join(staging, 'owner.json'), JSON.stringify(me));
      await rename(staging, dir);
      forgetStaging();
      break;
    } catch (e) {
      await rm(staging, { recursive: true, force: true });
      forgetStaging();
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') {
        forget();
        if (opts.onUnusable?.(e)) return null;
        throw e;
      }
    }
    const reason = staleReason(dir, staleMs);
    if (reason) {
      // Renamed away first, so two waiters cannot both remove it (and one a fresh lock).
      const aside = join(parent, `.${name}.stale-${randomBytes(4).toString('hex')}`);
      if (await rename(dir, aside).then(() => true, () => false)) {
        await rm(aside, { recursive: true, force: true });
        if (reason !== 'gone') opts.log?.(`reclaimed the stale lock ${dir}: ${reason}`);
      }
      continue;
    }
    if (!told) {
      const owner = await readFile(join(dir, 'owner.json'), 'utf8').then((t) => JSON.parse(t) as LockOwner, () => null);
      (opts.warn ?? opts.log)?.(`waiting for ${dir}, held by ${owner ? `pid ${owner.pid} on ${owner.host} since ${new Date(owner.since).toISOString()}` : 'another process'} (${opts.purpose})`);
      told = true;
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
  const beat = setInterval(() => {
    const now = new Date();
    utimes(join(dir, 'owner.json'), now, now).catch(() => undefined);
  }, Math.max(1000, staleMs / 4));
  beat.unref();
  return async () => {
    clearInterval(beat);
    // Renamed away whole, then removed: emptied in place, the folder would for a moment be an empty directory,
    // which a waiter's rename() replaces (rename onto an empty directory succeeds), failing our rmdir.
    const gone = join(parent, `.${name}.released-${randomBytes(4).toString('hex')}`);
    const forgetGone = removeOnExit(gone);
    await rename(dir, gone).then(
      () => rm(gone, { recursive: true, force: true }),
      () => rm(dir, { recursive: true, force: true }),
    );
    forgetGone();
    forget();
  };
}

/** `body` run while holding the lock at `dir` (see acquireLockAt), released however it ends. */
export async function withLockAt<T>(dir: string, body: () => Promise<T>, opts: LockAtOptions): Promise<T> {
  const release = await acquireLockAt(dir, opts);
  try {
    return await body();
  } finally {
    await release?.();
  }
}
