// Child process side of the isolated forward pass: perhaps a 'prepare' first (isolated.ts's spare worker, told
// the model before the prompts are known), then one request in, progress and the result out.
import { computePadStates, computePromptStates, computeRouterInputs, prepareForward, warmAhead, type ForwardOptions } from './run';
import { loadBackend } from './backend';

type Options = Omit<ForwardOptions, 'onProgress'>;
type Request =
  | { kind: 'prepare'; job: 'prompts' | 'router' | 'pad'; modelDir: string; options: Options; warm?: boolean }
  | { kind: 'prompts'; modelDir: string; prompts: number[][]; options: Options }
  | { kind: 'pad'; modelDir: string; padTokenId: number; options: Options }
  | { kind: 'router'; modelDir: string; prompts: number[][]; options: Options };

// Booted ahead of its request (onnxruntime ready when the pass comes): loading it takes this thread 25-60 ms. Not
// while a 'prepare' is under way (it was read in the same turn when it waited): loaded then between the setup's
// first file reads, it held up its weights' reads by as much; the setup loads it where its pass needs it (a native
// pass does not: its attention is native too).
let preparing = false;
setImmediate(() => {
  if (!preparing) loadBackend();
});

// When the parent dies (killed, or it stopped waiting) nobody wants the result: exit quietly, no EPIPE stack.
process.on('disconnect', () => process.exit(0));
const send = (m: unknown, then?: () => void) => {
  if (!process.connected) return process.exit(0);
  process.send!(m, undefined, {}, (e) => (e ? process.exit(0) : then?.()));
};

let served = false;
process.on('message', async (req: Request) => {
  if (req.kind === 'prepare') {
    // computeRouterInputs runs its layers with the router's input as an output: set up the same graph. The request
    // that follows takes the setup, waiting for it if it is still under way (run.ts, takeAhead).
    preparing = true;
    const ready = prepareForward(req.modelDir, req.job === 'router' ? { ...req.options, routerInput: true } : req.options);
    // Then, until the request comes, the other layers' file pages into the OS's cache (warmAhead).
    if (req.warm) void ready.then(() => warmAhead(() => served));
    return;
  }
  if (served) return;
  served = true;
  try {
    const options: ForwardOptions = { ...req.options, onProgress: (p) => send({ kind: 'progress', progress: p }) };
    const result =
      req.kind === 'prompts' ? await computePromptStates(req.modelDir, req.prompts, options) : req.kind === 'router' ? await computeRouterInputs(req.modelDir, req.prompts, options) : await computePadStates(req.modelDir, req.padTokenId, options);
    send({ kind: 'result', result }, () => process.exit(0));
  } catch (e) {
    const err = e as Error & { code?: string; place?: unknown };
    send({ kind: 'error', error: { name: err.name, message: err.message, code: err.code, place: err.place, stack: err.stack } }, () => process.exit(0));
  }
});
