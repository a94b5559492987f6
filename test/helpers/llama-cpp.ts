/**
 * llama.cpp through node-llama-cpp's prebuilt binaries (CPU, never built or downloaded here): load a GGUF,
 * tokenize, and generate greedily.
 */

// node-llama-cpp is ESM-only: load it with a real dynamic import, once.
let module_: Promise<typeof import('node-llama-cpp')> | null = null;
const nodeLlamaCpp = () => (module_ ??= import('node-llama-cpp'));

export interface GreedyRun {
  /** llama.cpp's tokens for the prompt, with BOS where the GGUF says to add it. */
  promptTokens: number[];
  /** Up to `n` tokens generated greedily from `inputIds`, stopping after an end-of-generation token. */
  newTokens: number[];
}

export async function llamaCppGreedy(file: string, prompt: string, inputIds: number[], n: number): Promise<GreedyRun> {
  const { getLlama, LlamaLogLevel } = await nodeLlamaCpp();
  const llama = await getLlama({ gpu: false, build: 'never', skipDownload: true, progressLogs: false, logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: file });
  try {
    const bos = model.tokens.bos;
    const text = model.tokenize(prompt) as number[];
    const addBos = model.fileInfo.metadata.tokenizer?.ggml?.add_bos_token === true;
    const promptTokens = addBos && bos !== null ? [bos as number, ...text] : text;
    const context = await model.createContext({ contextSize: 128, sequences: 1 });
    try {
      const seq = context.getSequence();
      const newTokens: number[] = [];
      for await (const t of seq.evaluate(inputIds as never[], { temperature: 0 })) {
        newTokens.push(t as number);
        if (newTokens.length >= n || model.isEogToken(t)) break;
      }
      return { promptTokens, newTokens };
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
    await llama.dispose();
  }
}
