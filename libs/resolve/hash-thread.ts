import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { sha256Of } from './sha256-file';

// Set by scripts/build.mjs: the built worker, relative to the bundle; unset when run from sources.
declare const __HASH_WORKER__: string | undefined;
const WORKER = join(__dirname, typeof __HASH_WORKER__ === 'string' ? __HASH_WORKER__ : 'hash-worker.ts');

/**
 * Weight files are hashed on a thread of their own: on the main thread sha256 (~1.7 GB/s a core) took turns with
 * the write's copies and noise, which it held up, and a first build over a 7B pair waited on it at the end. Files
 * smaller than this are hashed where they are asked for: a thread's start costs more than it frees.
 */
let minBytes = 64 << 20;

/** Tests: the smallest file hashed on the thread (returns the previous value). */
export function setHashThreadMin(bytes: number): number {
  const was = minBytes;
  minBytes = bytes;
  return was;
}

/** Files hashed on the thread, and threads started, in this process (tests read this). */
export const hashThreadStats = { files: 0, started: 0 };

/** The thread could not take a file (it failed to start or died): the caller hashes it itself. */
class ThreadGone extends Error {}

let worker: Worker | null | undefined; // undefined: not started yet; null: cannot be started here
const pending = new Map<number, { resolve: (r: { sha256: string; bytes: number }) => void; reject: (e: unknown) => void }>();
let nextId = 0;

function start(): Worker | null {
  if (!existsSync(WORKER)) return null;
  let w: Worker;
  try {
    // From sources (tests) the thread registers tsx first (a worker's .ts entry is not run through --import hooks).
    w = WORKER.endsWith('.ts') ? new Worker(`require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(WORKER)});`, { eval: true }) : new Worker(WORKER);
  } catch {
    return null;
  }
  hashThreadStats.started++;
  w.unref(); // keeps the process alive only while a file is being hashed
  const gone = () => {
    if (worker === w) worker = undefined;
    for (const p of pending.values()) p.reject(new ThreadGone());
    pending.clear();
  };
  w.on('message', (m: { id: number; sha256?: string; bytes?: number; error?: { message: string; code?: string } }) => {
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    if (pending.size === 0) w.unref();
    if (m.error) p.reject(Object.assign(new Error(m.error.message), m.error.code ? { code: m.error.code } : {}));
    else p.resolve({ sha256: m.sha256!, bytes: m.bytes! });
  });
  w.on('error', gone);
  w.on('exit', gone);
  return w;
}

/**
 * sha256 of a file of `size` bytes and how many it had when read: on the hashing thread when it is large, else (or
 * where the thread cannot run) on this one. A file system error is thrown as reading it here would throw it.
 */
export async function sha256Threaded(file: string, size: number): Promise<{ sha256: string; bytes: number }> {
  if (size < minBytes) return sha256Of(file);
  if (worker === undefined) worker = start();
  const w = worker;
  if (!w) return sha256Of(file);
  const id = nextId++;
  const done = new Promise<{ sha256: string; bytes: number }>((resolve, reject) => pending.set(id, { resolve, reject }));
  w.ref();
  w.postMessage({ id, file });
  try {
    const r = await done;
    hashThreadStats.files++;
    return r;
  } catch (e) {
    if (e instanceof ThreadGone) return sha256Of(file);
    throw e;
  }
}
