/**
 * Unit normals of the default noise (streamNormals), generated in worker threads a few slots ahead of the
 * tensor being noised: the generator is ~5 ns a value, most of the noise's cost, and without this it ran on the
 * thread that also copies and writes the shards (at 7B, 41 s of a write the disk does in ~25 s). The values are
 * those of streamNormals, read in order; the handoff is a ring of slots in shared memory, so the noise kernel
 * stays synchronous. Two threads (where there are two cores) take alternate slots: a slot is whole blocks of
 * the stream's words, and a thread skips the other's words (a twist without tempering, ~9% of generating them).
 */
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { ForgeError } from '../errors';

// Set by scripts/build.mjs: the built worker, relative to the bundle; unset when run from sources.
declare const __NOISE_WORKER__: string | undefined;
const WORKER = join(__dirname, typeof __NOISE_WORKER__ === 'string' ? __NOISE_WORKER__ : 'normals-worker.ts');

/** Values per slot (1 MiB of float32) and slots in the ring (16 MiB). */
export const SLOT_VALUES = 1 << 18;
export const SLOTS = 16;
/** The most values a caller should ask for at once (ready, read): the generator runs as far again ahead. */
export const NORMALS_AHEAD_BATCH = (SLOT_VALUES * SLOTS) / 2;
/** Control words: slots consumed by the reader, then per thread the slots it produced and its state. */
export const CONSUMED = 0;
export const producedAt = (thread: number) => 1 + 2 * thread;
export const stateAt = (thread: number) => 2 + 2 * thread;
export const IDLE = 0;
export const RUNNING = 1;
export const CANCELLED = 2;
export const FAILED = 3;
/** The most generator threads a ring has (its control words). */
const MAX_THREADS = 4;

/** Tensors with fewer values are noised on the calling thread: the handoff costs more than it saves. */
let minValues = 1 << 22;
/** No slot for this long: the worker is gone (an error it could not report). */
const STALL_MS = 60_000;

/** Tests: the smallest tensor whose normals go through the worker (returns the previous value). */
export function setNormalsAheadMin(values: number): number {
  const was = minValues;
  minValues = values;
  return was;
}

/** Streams served by the generator threads in this process, how many threads the last one had, and streams by threads (tests read this). */
export const normalsAheadStats = { streams: 0, threads: 0, byThreads: [0, 0, 0, 0, 0] };

interface Ring {
  /** Started as streams ask for them, up to maxThreads. */
  workers: Worker[];
  ctrl: Int32Array;
  data: Float32Array;
  /** A stream of this process reads the ring now. */
  open: boolean;
}
let ring: Ring | null | undefined;
/** Generator threads a stream may have: one per core, at most two (the machines this runs on have two). */
let maxThreads = Math.max(1, Math.min(2, availableParallelism()));

/** Tests: the most generator threads from now on (the current ring's end); returns the previous number. */
export async function setNormalsAheadThreads(threads: number): Promise<number> {
  if (threads < 1 || threads > MAX_THREADS) throw new RangeError(`1 to ${MAX_THREADS} generator threads, got ${threads}`);
  const was = maxThreads;
  maxThreads = threads;
  const r = ring;
  ring = undefined;
  if (r) await Promise.all(r.workers.map((w) => w.terminate()));
  return was;
}

function startRing(): Ring | null {
  try {
    const ctrl = new Int32Array(new SharedArrayBuffer(4 * (1 + 2 * MAX_THREADS)));
    const data = new Float32Array(new SharedArrayBuffer(SLOT_VALUES * SLOTS * 4));
    return { workers: [], ctrl, data, open: false };
  } catch {
    return null;
  }
}

/** The ring's thread `index`, started now; false where it cannot be. */
function addWorker(r: Ring): boolean {
  const { ctrl, data } = r;
  const index = r.workers.length;
  try {
    // From sources (tests) the thread registers tsx first (a worker's .ts entry is not run through --import hooks).
    const workerData = { ctrl, data, index };
    const worker = WORKER.endsWith('.ts')
      ? new Worker(`require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(WORKER)});`, { eval: true, workerData })
      : new Worker(WORKER, { workerData });
    worker.unref(); // keeps the process alive only while a stream is open (normalsAhead)
    worker.on('error', () => {
      Atomics.store(ctrl, stateAt(index), FAILED);
      Atomics.notify(ctrl, producedAt(index));
      if (ring === r) ring = null;
    });
    r.workers.push(worker);
    return true;
  } catch {
    return false;
  }
}

/** A reader of a stream's normals from the worker. */
export interface NormalsAhead {
  /** Resolves once the next `values` values (at most NORMALS_AHEAD_BATCH) are generated: a read of them will not block. */
  ready(values: number): Promise<void>;
  read(out: Float32Array): void;
  /**
   * The next values (at least one, at most `max`) where they lie in the ring, read as read() reads them: valid until
   * the next read(), view() or close().
   */
  view(max: number): Float32Array;
  /** Done with the stream (all read or abandoned): the worker stops and the ring is free for the next. */
  close(): void;
}

/**
 * streamNormals(seed, stream, n) generated ahead in worker threads (at most `threads`; fewer where the machine has
 * fewer cores), or null where that does not pay (a small tensor) or cannot be had (no worker, or the ring is in use
 * by another stream): the caller generates them itself.
 */
export function normalsAhead(seed: number | bigint | string, stream: string, n: number, threads = Infinity): NormalsAhead | null {
  if (n < minValues) return null;
  if (ring === undefined) ring = startRing();
  const r = ring;
  if (!r || r.open) return null;
  const want = Math.max(1, Math.min(threads, maxThreads));
  while (r.workers.length < want && addWorker(r));
  if (ring !== r || r.workers.length === 0) return null;
  const { ctrl, data } = r;
  const workers = r.workers.slice(0, want);
  const W = workers.length;
  const ids = workers.map((_, w) => w);
  const state = (w: number) => Atomics.load(ctrl, stateAt(w));
  const failed = () => ids.some((w) => state(w) === FAILED);
  // Every thread is done with the last stream (each marks IDLE once it stops producing), also one this stream
  // leaves out: a cancelled thread finishes the slot it is drawing, into the ring this stream is about to use.
  const all = r.workers.map((_, w) => w);
  for (const w of all) if (!waitFor(() => state(w) !== RUNNING && state(w) !== CANCELLED, ctrl, stateAt(w))) return null;
  if (all.some((w) => state(w) === FAILED)) return null;
  r.open = true;
  // Referenced while a stream is open: a wait in ready() (Atomics.waitAsync) does not keep the event loop alive, and
  // a process with nothing else to do would end there, its write unfinished, with exit code 0.
  for (const w of workers) w.ref();
  Atomics.store(ctrl, CONSUMED, 0);
  for (const w of ids) {
    Atomics.store(ctrl, producedAt(w), 0);
    Atomics.store(ctrl, stateAt(w), RUNNING);
  }
  for (const w of workers) w.postMessage({ seed: String(seed), stream, n, threads: W });
  normalsAheadStats.threads = W;
  normalsAheadStats.byThreads[W]!++;
  normalsAheadStats.streams++;
  const slots = Math.ceil(n / SLOT_VALUES);
  /** Whether slot s is produced: its thread (s mod W) has produced its ⌊s/W⌋ + 1 first slots. */
  const produced = (s: number) => Atomics.load(ctrl, producedAt(s % W)) > Math.floor(s / W);
  let slot = 0;
  let at = 0;
  let held = Math.min(SLOT_VALUES, n);
  let ready = false;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    // Only a stream still running is cancelled: a thread may have marked its share done (IDLE) just now.
    for (const w of ids) Atomics.compareExchange(ctrl, stateAt(w), RUNNING, CANCELLED);
    Atomics.notify(ctrl, CONSUMED);
    r.open = false;
    for (const w of workers) w.unref();
  };
  /** The next values of the current slot (at most max), the slot before handed back and this one waited for. */
  function next(max: number): Float32Array {
    if (at === held) {
      // This slot is read: hand it back.
      slot++;
      at = 0;
      held = Math.min(SLOT_VALUES, n - slot * SLOT_VALUES);
      ready = false;
      Atomics.store(ctrl, CONSUMED, slot);
      Atomics.notify(ctrl, CONSUMED);
    }
    if (!ready) {
      const index = producedAt(slot % W);
      const ok = waitFor(() => produced(slot) || failed(), ctrl, index);
      if (!ok || !produced(slot)) {
        close();
        throw new ForgeError('noise_worker', `the noise generator thread stopped before stream ${stream} was complete${ok ? '' : ` (no values for ${STALL_MS / 1000} s)`}`);
      }
      ready = true;
    }
    const take = Math.min(max, held - at);
    const base = (slot % SLOTS) * SLOT_VALUES + at;
    at += take;
    return data.subarray(base, base + take);
  }
  return {
    async ready(values) {
      // Slots holding the values read so far and the next `values`.
      const need = Math.min(Math.ceil((slot * SLOT_VALUES + at + values) / SLOT_VALUES), slots);
      let seen = -1;
      let until = 0;
      for (;;) {
        // The first slot still missing, if any (each thread produces its slots in order).
        let missing = -1;
        for (let s = Math.max(slot, need - W); s < need; s++) if (!produced(s)) { missing = s; break; }
        // A failure, or a thread that stopped producing, is left to read() to report.
        if (missing < 0 || failed() || closed) return;
        const index = producedAt(missing % W);
        const count = Atomics.load(ctrl, index);
        const progress = ids.reduce((a, w) => a + Atomics.load(ctrl, producedAt(w)), 0);
        if (progress !== seen) [seen, until] = [progress, Date.now() + STALL_MS];
        else if (Date.now() > until) return;
        // Woken by the thread's notify without blocking this one.
        const w = waitAsync(ctrl, index, count, 1000);
        if (w.async) await w.value;
      }
    },
    read(out) {
      for (let o = 0; o < out.length; ) {
        const v = next(out.length - o);
        out.set(v, o);
        o += v.length;
      }
    },
    view: (max) => next(max),
    close,
  };
}

/** Atomics.waitAsync (Node 16+; not in this TypeScript lib's types). */
const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, ms: number): { async: boolean; value: Promise<string> | string } }).waitAsync;

/** Waits (blocking this thread) until `done`, woken by notifies on ctrl[index]; false after STALL_MS without it. */
function waitFor(done: () => boolean, ctrl: Int32Array, index: number): boolean {
  const until = Date.now() + STALL_MS;
  while (!done()) {
    const left = until - Date.now();
    if (left <= 0) return false;
    Atomics.wait(ctrl, index, Atomics.load(ctrl, index), Math.min(left, 1000));
  }
  return true;
}
