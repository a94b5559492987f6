/**
 * Unit normals of the default noise (streamNormals), generated in a worker thread a few slots ahead of the
 * tensor being noised: the generator is ~7 ns a value, most of the noise's cost, and without this it ran on the
 * thread that also copies and writes the shards (at 7B, 41 s of a write the disk does in ~25 s). The values are
 * those of streamNormals, read in order; the handoff is a ring of slots in shared memory, so the noise kernel
 * stays synchronous.
 */
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
/** Control words: slots produced, slots consumed, state. */
export const PRODUCED = 0;
export const CONSUMED = 1;
export const STATE = 2;
export const IDLE = 0;
export const RUNNING = 1;
export const CANCELLED = 2;
export const FAILED = 3;

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

/** Streams served by the generator thread in this process (tests read this). */
export const normalsAheadStats = { streams: 0 };

interface Ring {
  worker: Worker;
  ctrl: Int32Array;
  data: Float32Array;
  /** A stream of this process reads the ring now. */
  open: boolean;
}
let ring: Ring | null | undefined;

function startRing(): Ring | null {
  try {
    const ctrl = new Int32Array(new SharedArrayBuffer(16));
    const data = new Float32Array(new SharedArrayBuffer(SLOT_VALUES * SLOTS * 4));
    // From sources (tests) the thread registers tsx first (a worker's .ts entry is not run through --import hooks).
    const worker = WORKER.endsWith('.ts')
      ? new Worker(`require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(WORKER)});`, { eval: true, workerData: { ctrl, data } })
      : new Worker(WORKER, { workerData: { ctrl, data } });
    worker.unref(); // keeps the process alive only while a stream is open (normalsAhead)
    worker.on('error', () => {
      Atomics.store(ctrl, STATE, FAILED);
      ring = null;
    });
    return { worker, ctrl, data, open: false };
  } catch {
    return null;
  }
}

/** A reader of a stream's normals from the worker. */
export interface NormalsAhead {
  /** Resolves once the next `values` values (at most NORMALS_AHEAD_BATCH) are generated: a read of them will not block. */
  ready(values: number): Promise<void>;
  read(out: Float32Array): void;
  /** Done with the stream (all read or abandoned): the worker stops and the ring is free for the next. */
  close(): void;
}

/**
 * streamNormals(seed, stream, n) generated ahead in the worker thread, or null where that does not pay (a small
 * tensor) or cannot be had (no worker, or the ring is in use by another stream): the caller generates them itself.
 */
export function normalsAhead(seed: number | bigint | string, stream: string, n: number): NormalsAhead | null {
  if (n < minValues) return null;
  if (ring === undefined) ring = startRing();
  const r = ring;
  if (!r || r.open) return null;
  const { ctrl, data } = r;
  // The worker is done with the last stream (it marks IDLE once it stops producing).
  if (!waitFor(() => Atomics.load(ctrl, STATE) !== RUNNING && Atomics.load(ctrl, STATE) !== CANCELLED, ctrl, STATE)) return null;
  if (Atomics.load(ctrl, STATE) === FAILED) return null;
  r.open = true;
  // Referenced while a stream is open: a wait in ready() (Atomics.waitAsync) does not keep the event loop alive, and
  // a process with nothing else to do would end there, its write unfinished, with exit code 0.
  r.worker.ref();
  Atomics.store(ctrl, PRODUCED, 0);
  Atomics.store(ctrl, CONSUMED, 0);
  Atomics.store(ctrl, STATE, RUNNING);
  r.worker.postMessage({ seed: String(seed), stream, n });
  normalsAheadStats.streams++;
  let slot = 0;
  let at = 0;
  let held = Math.min(SLOT_VALUES, n);
  let ready = false;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    // Only a stream still running is cancelled: the worker may have marked it done (IDLE) just now.
    Atomics.compareExchange(ctrl, STATE, RUNNING, CANCELLED);
    Atomics.notify(ctrl, CONSUMED);
    r.open = false;
    r.worker.unref();
  };
  return {
    async ready(values) {
      // Slots holding the values read so far and the next `values`.
      const need = Math.min(Math.ceil((slot * SLOT_VALUES + at + values) / SLOT_VALUES), Math.ceil(n / SLOT_VALUES));
      let seen = -1;
      let until = 0;
      for (;;) {
        const produced = Atomics.load(ctrl, PRODUCED);
        // A failure, or a thread that stopped producing, is left to read() to report.
        if (produced >= need || Atomics.load(ctrl, STATE) === FAILED || closed) return;
        if (produced !== seen) [seen, until] = [produced, Date.now() + STALL_MS];
        else if (Date.now() > until) return;
        // Woken by the worker's notify without blocking this thread.
        const w = waitAsync(ctrl, PRODUCED, produced, 1000);
        if (w.async) await w.value;
      }
    },
    read(out) {
      for (let o = 0; o < out.length; ) {
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
          const ok = waitFor(() => Atomics.load(ctrl, PRODUCED) > slot || Atomics.load(ctrl, STATE) === FAILED, ctrl, PRODUCED);
          if (!ok || Atomics.load(ctrl, PRODUCED) <= slot) {
            close();
            throw new ForgeError('noise_worker', `the noise generator thread stopped before stream ${stream} was complete${ok ? '' : ` (no values for ${STALL_MS / 1000} s)`}`);
          }
          ready = true;
        }
        const take = Math.min(out.length - o, held - at);
        const base = (slot % SLOTS) * SLOT_VALUES + at;
        out.set(data.subarray(base, base + take), o);
        o += take;
        at += take;
      }
    },
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
