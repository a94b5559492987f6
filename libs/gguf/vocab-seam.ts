/**
 * The tokenizer's GGUF keys (`tokenizer.ggml.*`, `tokenizer.chat_template`) come from vocab.ts
 * (`vocabMetadata`, branch feat/gguf-vocab). Until it is merged this seam gives none: the file then holds
 * the model but no tokenizer, and llama.cpp will not load it.
 */
import type { GgufKv } from './types';

export async function vocabKeys(_modelDir: string): Promise<GgufKv[]> {
  return [];
}
