// Child process side of an isolated forward pass: one request in, progress and the result out (isolated.ts forks it).
// worker-main.ts has the same protocol written out; it can move onto this when next touched.
import type { ForwardProgress } from './run';

/** Serves the one request this process gets with `handle`, then exits. */
export function serveOneRequest<R>(handle: (req: R, onProgress: (p: ForwardProgress) => void) => Promise<unknown>): void {
  // When the parent dies (killed, or it stopped waiting) nobody wants the result: exit quietly, no EPIPE stack.
  process.on('disconnect', () => process.exit(0));
  const send = (m: unknown, then?: () => void) => {
    if (!process.connected) return process.exit(0);
    process.send!(m, undefined, {}, (e) => (e ? process.exit(0) : then?.()));
  };
  process.once('message', async (req: R) => {
    try {
      const result = await handle(req, (p) => send({ kind: 'progress', progress: p }));
      send({ kind: 'result', result }, () => process.exit(0));
    } catch (e) {
      const err = e as Error & { code?: string; place?: unknown };
      send({ kind: 'error', error: { name: err.name, message: err.message, code: err.code, place: err.place, stack: err.stack } }, () => process.exit(0));
    }
  });
}
