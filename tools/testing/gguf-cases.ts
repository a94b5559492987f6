/**
 * The merges whose GGUF files are compared with llama.cpp's converter (test/gguf/converter.test.ts), one per
 * output architecture and layout, over the family fixtures. tools/testing/record-gguf-converter.ts records
 * what the converter writes from each merged folder.
 */
import { join } from 'node:path';
import { readGguf, readTensorData } from '../../libs/gguf';
import { createHash } from 'node:crypto';

export interface GgufCase {
  name: string;
  recipe: (families: string) => string;
  layout?: 'fused';
}

const fam = (families: string, f: string) => JSON.stringify(join(families, f, 'model'));
const experts = (families: string, f: string) => `experts:\n  - source_model: ${fam(families, f)}\n  - source_model: ${fam(families, f)}\n    noise_scale: 0.01\n`;

export const GGUF_CASES: GgufCase[] = [
  { name: 'mixtral', recipe: (d) => `base_model: ${fam(d, 'mistral')}\ngate_mode: random\nexperts_per_token: 2\n${experts(d, 'mistral')}` },
  { name: 'mixtral-bf16', recipe: (d) => `base_model: ${fam(d, 'llama-fp16')}\ngate_mode: random\ndtype: bfloat16\nexperts_per_token: 2\n${experts(d, 'llama-fp16')}` },
  { name: 'deepseek', recipe: (d) => `base_model: ${fam(d, 'mistral')}\ngate_mode: random\narchitecture: deepseek\nexperts_per_token: 2\n${experts(d, 'mistral')}shared_experts:\n  - source_model: ${fam(d, 'mistral')}\n` },
  { name: 'qwen2-moe', recipe: (d) => `base_model: ${fam(d, 'qwen2')}\ngate_mode: random\narchitecture: qwen\nexperts_per_token: 2\n${experts(d, 'qwen2')}shared_experts:\n  - source_model: ${fam(d, 'qwen2')}\n` },
  { name: 'qwen3-moe', recipe: (d) => `base_model: ${fam(d, 'qwen3')}\ngate_mode: random\narchitecture: qwen3\nexperts_per_token: 2\n${experts(d, 'qwen3')}` },
  { name: 'qwen3-moe-fused', layout: 'fused', recipe: (d) => `base_model: ${fam(d, 'qwen3')}\ngate_mode: random\narchitecture: qwen3\nexperts_per_token: 2\n${experts(d, 'qwen3')}` },
];

/** What is compared: keys other than the tokenizer's and authorship's, every tensor's name, shape, type and bytes. */
export interface GgufSummary {
  metadata: Record<string, unknown>;
  tensors: { name: string; shape: number[]; type: string; sha256: string }[];
}

const AUTHORSHIP_KEPT = new Set(['general.architecture', 'general.type', 'general.file_type', 'general.quantization_version', 'general.alignment']);
export const comparedKey = (k: string) => !k.startsWith('tokenizer.') && (!k.startsWith('general.') || AUTHORSHIP_KEPT.has(k));

export async function ggufSummary(file: string): Promise<GgufSummary> {
  const g = await readGguf(file);
  const metadata: Record<string, unknown> = {};
  for (const [k, v] of g.metadata) if (comparedKey(k)) metadata[k] = JSON.parse(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x)));
  const tensors = [];
  for (const t of g.tensors) tensors.push({ name: t.name, shape: t.shape, type: t.type, sha256: createHash('sha256').update(await readTensorData(file, t)).digest('hex') });
  return { metadata, tensors };
}
