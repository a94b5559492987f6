// The hashing thread of hash-thread.ts: sha256 of the files it is sent, one at a time, in the order sent.
import { parentPort } from 'node:worker_threads';
import { sha256Of } from './sha256-file';

let queue: Promise<void> = Promise.resolve();
parentPort!.on('message', (m: { id: number; file: string }) => {
  queue = queue.then(async () => {
    try {
      parentPort!.postMessage({ id: m.id, ...(await sha256Of(m.file)) });
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      parentPort!.postMessage({ id: m.id, error: { message: err?.message ?? String(e), code: err?.code } });
    }
  });
});
