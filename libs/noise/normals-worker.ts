// The worker thread of normals-ahead.ts: fills the ring with a stream's normals, a slot at a time, up to SLOTS
// slots ahead of the reader; stops at the stream's end or when the reader cancels.
import { workerData, parentPort } from 'node:worker_threads';
import { streamNormals } from './noise';
import { CONSUMED, FAILED, IDLE, PRODUCED, RUNNING, SLOTS, SLOT_VALUES, STATE } from './normals-ahead';

const { ctrl, data } = workerData as { ctrl: Int32Array; data: Float32Array };

parentPort!.on('message', (m: { seed: string; stream: string; n: number }) => {
  Atomics.store(ctrl, STATE, fill(m) ? IDLE : FAILED);
  Atomics.notify(ctrl, STATE);
  Atomics.notify(ctrl, PRODUCED);
});

/** Produces the stream's slots until its end or a cancel; false when generating failed. */
function fill(m: { seed: string; stream: string; n: number }): boolean {
  try {
    // The seed as text: streamNormals hashes String(seed), so a number and its text give one stream.
    const normals = streamNormals(m.seed, m.stream, m.n);
    const slots = Math.ceil(m.n / SLOT_VALUES);
    for (let s = 0; s < slots; s++) {
      // Wait for room: at most SLOTS slots ahead of the reader.
      for (;;) {
        if (Atomics.load(ctrl, STATE) !== RUNNING) return true; // cancelled
        const consumed = Atomics.load(ctrl, CONSUMED);
        if (s - consumed < SLOTS) break;
        Atomics.wait(ctrl, CONSUMED, consumed, 1000);
      }
      const len = Math.min(SLOT_VALUES, m.n - s * SLOT_VALUES);
      const at = (s % SLOTS) * SLOT_VALUES;
      normals.read(data.subarray(at, at + len));
      Atomics.store(ctrl, PRODUCED, s + 1);
      Atomics.notify(ctrl, PRODUCED);
    }
    return true;
  } catch {
    return false;
  }
}
