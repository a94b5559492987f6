/** The tokenizer's GGUF keys (`tokenizer.ggml.*`, `tokenizer.chat_template`), from vocab.ts. */
import type { GgufKv } from './types';
import { vocabMetadata } from './vocab';

export async function vocabKeys(modelDir: string): Promise<GgufKv[]> {
  return vocabMetadata(modelDir);
}
