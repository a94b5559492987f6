/** Tiny models of each input family, recipes over them, and readers for the merged output (architecture tests). */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsWeights, decodeFloats, encodeFloats, readTensorBytes } from '../../libs/safetensors';
import { writeTinyModel, type TinyModelSpec } from '../../tools/testing/tiny-models';
import { FIXTURES } from './tmp';

export type Family = TinyModelSpec['modelType'];

/** Fixture folder whose tokenizer files a generated model of this family gets. */
const TOKENIZER_OF: Record<Family, string> = { llama: 'llama-fp16', mistral: 'mistral', qwen2: 'qwen2', qwen3: 'qwen3' };

export const TINY_SIZE = { hidden: 16, layers: 2, heads: 2, kvHeads: 1, intermediate: 24, vocab: 512 } as const;

/**
 * A tiny random model with the family's tokenizer. `seed` makes experts differ; `config` adds or replaces
 * config.json keys (null removes one).
 */
export async function tinyFamilyModel(dir: string, family: Family, seed: number, over: Partial<TinyModelSpec> = {}, config: Record<string, unknown> = {}): Promise<string> {
  await writeTinyModel(dir, { modelType: family, ...TINY_SIZE, seed, ...over });
  const src = join(FIXTURES, 'families', TOKENIZER_OF[family], 'model');
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(src, f), join(dir, f));
  if (Object.keys(config).length > 0) {
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    for (const [k, v] of Object.entries(config)) {
      if (v === null) delete cfg[k];
      else cfg[k] = v;
    }
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  }
  return dir;
}

export interface ExpertYaml {
  model: string;
  prompts?: string[];
  negative?: string[];
  residual?: number;
  noise?: number;
}

/** Recipe YAML text (JSON is YAML, and it quotes every path and prompt safely). */
export function recipeYaml(r: { base: string; experts: ExpertYaml[]; shared?: ExpertYaml[]; gate: string; topK?: number; dtype?: string; architecture?: string }): string {
  const ex = (e: ExpertYaml) => ({
    source_model: e.model,
    ...(e.prompts ? { positive_prompts: e.prompts } : {}),
    ...(e.negative ? { negative_prompts: e.negative } : {}),
    ...(e.residual !== undefined ? { residual_scale: e.residual } : {}),
    ...(e.noise !== undefined ? { noise_scale: e.noise } : {}),
  });
  const lines = [`base_model: ${JSON.stringify(r.base)}`, `gate_mode: ${r.gate}`];
  if (r.dtype) lines.push(`dtype: ${r.dtype}`);
  if (r.topK !== undefined) lines.push(`experts_per_token: ${r.topK}`);
  if (r.architecture) lines.push(`architecture: ${JSON.stringify(r.architecture)}`);
  lines.push(`experts: ${JSON.stringify(r.experts.map(ex))}`);
  if (r.shared) lines.push(`shared_experts: ${JSON.stringify(r.shared.map(ex))}`);
  return lines.join('\n') + '\n';
}

export interface ReadTensor {
  dtype: string;
  shape: number[];
  bytes: Buffer;
  values: Float32Array;
}

export async function readAll(dir: string): Promise<Map<string, ReadTensor>> {
  const w = await SafetensorsWeights.openFolder(dir);
  const out = new Map<string, ReadTensor>();
  for (const name of w.names()) {
    const loc = w.get(name);
    const bytes = await readTensorBytes(loc);
    out.set(name, { dtype: loc.dtype, shape: loc.shape, bytes, values: decodeFloats(bytes, loc.dtype) });
  }
  return out;
}

/** The bytes a source tensor should have in the output: residual_scale (float32 here), then the cast. */
export function expectedBytes(src: ReadTensor, outDtype: string, scale?: number): Buffer {
  const v = Float32Array.from(src.values, (x) => (scale === undefined ? x : Math.fround(x * Math.fround(scale))));
  return encodeFloats(v, outDtype as 'F32' | 'F16' | 'BF16');
}

export function rowNorms(t: ReadTensor): number[] {
  const [rows, cols] = t.shape as [number, number];
  return Array.from({ length: rows }, (_, r) => Math.hypot(...t.values.subarray(r * cols, (r + 1) * cols)));
}

/** weight_map keys of a sharded output: the write order. */
export function writeOrder(dir: string): string[] {
  return Object.keys(JSON.parse(readFileSync(join(dir, 'model.safetensors.index.json'), 'utf8')).weight_map);
}
