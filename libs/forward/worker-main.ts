// Child process side of the isolated forward pass: one request in, progress and the result out.
import { computePadStates, computePromptStates, type ForwardOptions } from './run';

type Request =
  | { kind: 'prompts'; modelDir: string; prompts: number[][]; options: Omit<ForwardOptions, 'onProgress'> }
  | { kind: 'pad'; modelDir: string; padTokenId: number; options: Omit<ForwardOptions, 'onProgress'> };

process.once('message', async (req: Request) => {
  try {
    const options: ForwardOptions = { ...req.options, onProgress: (p) => process.send!({ kind: 'progress', progress: p }) };
    const result = req.kind === 'prompts' ? await computePromptStates(req.modelDir, req.prompts, options) : await computePadStates(req.modelDir, req.padTokenId, options);
    process.send!({ kind: 'result', result }, () => process.exit(0));
  } catch (e) {
    const err = e as Error & { code?: string; place?: unknown };
    process.send!({ kind: 'error', error: { name: err.name, message: err.message, code: err.code, place: err.place, stack: err.stack } }, () => process.exit(0));
  }
});
