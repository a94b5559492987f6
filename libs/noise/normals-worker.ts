// A worker thread of normals-ahead.ts: fills its share of the ring with a stream's normals (slots w, w + W,
// w + 2W, ... of W threads), up to SLOTS slots ahead of the reader; stops at the stream's end or a cancel.
import { workerData, parentPort } from 'node:worker_threads';
import { drawBlocks } from '../gates';
import { streamEngine } from './noise';
import { CONSUMED, FAILED, IDLE, producedAt, RUNNING, SLOTS, SLOT_VALUES, stateAt } from './normals-ahead';

const { ctrl, data, index } = workerData as { ctrl: Int32Array; data: Float32Array; index: number };
const PRODUCED = producedAt(index);
const STATE = stateAt(index);
/** A last slot's partial block. */
const tail = new Float32Array(16);

parentPort!.on('message', (m: Stream) => {
  Atomics.store(ctrl, STATE, fill(m) ? IDLE : FAILED);
  Atomics.notify(ctrl, STATE);
  Atomics.notify(ctrl, PRODUCED);
});

/** A stream's normals, shared by `threads` threads. */
interface Stream {
  seed: string;
  stream: string;
  n: number;
  threads: number;
}

/** Produces this thread's slots of the stream until its end or a cancel; false when generating failed. */
function fill(m: Stream): boolean {
  const threads = m.threads;
  try {
    // The seed as text: streamNormals hashes String(seed), so a number and its text give one stream.
    const mt = streamEngine(m.seed, m.stream);
    // A slot is a whole number of 16-word blocks: this thread skips the words of the other threads' slots.
    mt.skip(index * SLOT_VALUES);
    const slots = Math.ceil(m.n / SLOT_VALUES);
    for (let s = index, mine = 0; s < slots; s += threads, mine++) {
      // Wait for room: at most SLOTS slots ahead of the reader.
      for (;;) {
        if (Atomics.load(ctrl, STATE) !== RUNNING) return true; // cancelled
        const consumed = Atomics.load(ctrl, CONSUMED);
        if (s - consumed < SLOTS) break;
        Atomics.wait(ctrl, CONSUMED, consumed, 1000);
      }
      const len = Math.min(SLOT_VALUES, m.n - s * SLOT_VALUES);
      const at = (s % SLOTS) * SLOT_VALUES;
      // Whole blocks into the ring; the last slot's partial block through `tail` (past it lies another slot).
      const whole = len & ~15;
      drawBlocks(mt, data.subarray(at, at + whole));
      if (whole < len) {
        drawBlocks(mt, tail);
        data.set(tail.subarray(0, len - whole), at + whole);
      }
      Atomics.store(ctrl, PRODUCED, mine + 1);
      Atomics.notify(ctrl, PRODUCED);
      if (s + threads < slots) mt.skip((threads - 1) * SLOT_VALUES);
    }
    return true;
  } catch {
    return false;
  }
}
