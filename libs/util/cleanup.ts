import { rmSync } from 'node:fs';
import { nowNs, sleepUntil } from './stat-key';

/**
 * Temporary paths removed on any exit: normal, a crash, or SIGINT/SIGTERM/SIGHUP (whose default action
 * would skip every `finally`). SIGKILL cannot be caught; the next run cleans what it leaves.
 */
/** Each path, with the check that it is still ours to remove (a lock another process may hold by then). */
const paths = new Map<string, (() => boolean) | undefined>();
let installed = false;

const SIGNALS = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 } as const;

function removeAll(keep = false): void {
  for (const [p, ours] of paths) {
    try {
      if (ours && !ours()) continue;
      // An async write still in flight on libuv's thread pool can add a file while we remove: retry (ENOTEMPTY).
      rmSync(p, { recursive: true, force: true, maxRetries: 10, retryDelay: 20 });
    } catch {
      // Never a stack trace on the way out; the next run removes work folders whose process is gone.
    }
  }
  if (!keep) paths.clear();
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', () => removeAll());
  for (const [sig, n] of Object.entries(SIGNALS)) {
    process.on(sig, () => {
      // An operation already on libuv's thread pool (a stage's mkdir, a file's open) can create a path again just
      // after it is removed: remove, let what is in flight land, remove again. Queued ones never run: we exit.
      removeAll(true);
      sleepUntil(nowNs() + 30_000_000n);
      removeAll();
      // Another handler (Nx's) may want to finish its own shutdown first; when we are the only one, exit as the
      // signal would. Either way the process does not carry on working for long after a signal.
      if (process.listenerCount(sig) <= 1) process.exit(128 + n);
      setTimeout(() => process.exit(128 + n), 5000).unref();
    });
  }
}

/**
 * Ends the process on SIGINT, SIGTERM or SIGHUP as their default would (128 + the signal), removing the temporary
 * paths registered by then: for a process that runs on until stopped (a watch), whether or not a path is registered.
 */
export function exitOnSignals(): void {
  install();
}

/**
 * Removes `path` when the process ends unless the returned function is called first (the path was kept). `ours`,
 * asked at exit, lets a path be registered before it is known to be ours (a lock whose rename may be in flight).
 */
export function removeOnExit(path: string, ours?: () => boolean): () => void {
  install();
  paths.set(path, ours);
  return () => void paths.delete(path);
}

/** Whether this process has `path` registered now (a temporary path in use, not one left by an earlier run). */
export function inUse(path: string): boolean {
  return paths.has(path);
}
