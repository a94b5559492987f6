// Child process side of the isolated forward pass: one request in, progress and the result out.
import { computePadStates, computePromptStates, computeRouterInputs, type ForwardOptions } from './run';

type Request =
  | { kind: 'prompts'; modelDir: string; prompts: number[][]; options: Omit<ForwardOptions, 'onProgress'> }
  | { kind: 'pad'; modelDir: string; padTokenId: number; options: Omit<ForwardOptions, 'onProgress'> }
  | { kind: 'router'; modelDir: string; prompts: number[][]; options: Omit<ForwardOptions, 'onProgress'> };

// When the parent dies (killed, or it stopped waiting) nobody wants the result: exit quietly, no EPIPE stack.
process.on('disconnect', () => process.exit(0));
const send = (m: unknown, then?: () => void) => {
  if (!process.connected) return process.exit(0);
  process.send!(m, undefined, {}, (e) => (e ? process.exit(0) : then?.()));
};

process.once('message', async (req: Request) => {
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
