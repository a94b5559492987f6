import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeFloats } from '../safetensors/dtype';
import { readTensorBytes, SafetensorsWeights } from '../safetensors/reader';
import { encodeHeader } from '../safetensors/writer';
import { loadTokenizer } from '../tokenizer';
import { ModelError } from '../errors';
import type { ModelSource } from '../architectures/types';
import type { MergeContext } from './context';

/** One distinct prompt text with its token ids and reduced states per layer input. */
export interface PromptStateEntry {
  text: string;
  ids: number[];
  count: number;
}

export interface PromptStatesIndex {
  version: 1;
  mode: 'cheap_embed' | 'hidden' | 'none';
  layers: number;
  hidden: number;
  prompts: PromptStateEntry[];
  computed: number;
  fromCache: number;
}

/** All prompt texts of the gated experts, deduplicated, in first-seen order. */
export function distinctPrompts(merge: MergeContext): string[] {
  const seen = new Set<string>();
  for (const ex of merge.gatedExperts) {
    for (const p of [...(ex.spec.positive_prompts ?? []), ...(ex.spec.negative_prompts ?? [])]) seen.add(p);
  }
  return [...seen];
}

/** Reads embedding rows on demand from `model.embed_tokens.weight` (never lm_head, as the reference). */
export async function embeddingTable(base: ModelSource): Promise<(id: number) => Float32Array> {
  const name = 'model.embed_tokens.weight';
  if (!base.weights.has(name)) {
    throw new ModelError('missing_tensor', `cheap_embed needs the base model's token embeddings, which ${base.ref} lacks`, { file: base.dir, tensor: name });
  }
  const loc = base.weights.get(name);
  const [V, H] = loc.shape as [number, number];
  const bytes = await readTensorBytes(loc);
  const el = bytes.length / (V * H);
  return (id: number) => {
    if (id < 0 || id >= V) throw new ModelError('bad_token', `token id ${id} is outside the embedding table (${V} rows)`, { file: loc.file, tensor: name });
    return decodeFloats(bytes.subarray(id * H * el, (id + 1) * H * el), loc.dtype);
  };
}

/**
 * Stage 2: per distinct prompt, token ids and reduced states. For cheap_embed the state is the sum of
 * the prompt's token embeddings (one "layer"); random modes need none.
 */
export async function runEmbedPrompts(merge: MergeContext, outDir: string): Promise<PromptStatesIndex> {
  const { ctx } = merge;
  await mkdir(outDir, { recursive: true });
  const H = ctx.base.config.hiddenSize;
  const mode = ctx.gateMode === 'cheap_embed' ? 'cheap_embed' : ctx.gateMode.startsWith('hidden') ? 'hidden' : 'none';
  const index: PromptStatesIndex = { version: 1, mode, layers: mode === 'cheap_embed' ? 1 : 0, hidden: H, prompts: [], computed: 0, fromCache: 0 };
  const tensors: { name: string; data: Float32Array }[] = [];
  if (mode === 'cheap_embed') {
    const tok = await loadTokenizer(ctx.base.dir);
    const row = await embeddingTable(ctx.base);
    for (const text of distinctPrompts(merge)) {
      const ids = tok.encodePrompt(text);
      const sum = new Float64Array(H);
      for (const id of ids) {
        const r = row(id);
        for (let k = 0; k < H; k++) sum[k] += r[k]!;
      }
      tensors.push({ name: `p${index.prompts.length}.sum`, data: Float32Array.from(sum) });
      index.prompts.push({ text, ids, count: ids.length });
      index.computed++;
    }
  }
  await writeStates(join(outDir, 'prompt-states.safetensors'), tensors, 1);
  await writeFile(join(outDir, 'prompt-states.json'), JSON.stringify(index, null, 2) + '\n');
  await writeFile(join(outDir, 'stats.json'), JSON.stringify({ computed: index.computed, fromCache: index.fromCache }, null, 2) + '\n');
  return index;
}

async function writeStates(file: string, tensors: { name: string; data: Float32Array }[], layers: number): Promise<void> {
  const specs = tensors.map((t) => ({ name: t.name, dtype: 'F32', shape: [layers, t.data.length / layers] }));
  const header = encodeHeader(specs);
  const body = tensors.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  await writeFile(file, Buffer.concat([header, ...body]));
}

export async function readPromptStates(dir: string): Promise<{ index: PromptStatesIndex; tensor(name: string): Promise<Float32Array> }> {
  const index = JSON.parse(await readFile(join(dir, 'prompt-states.json'), 'utf8')) as PromptStatesIndex;
  const weights = await SafetensorsWeights.openFiles(dir, [join(dir, 'prompt-states.safetensors')]);
  return { index, tensor: async (name) => decodeFloats(await readTensorBytes(weights.get(name)), 'F32') };
}
