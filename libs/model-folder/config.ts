import { join } from 'node:path';
import { MODEL_CONFIG, readInputText } from '../input';
import { ModelError, type ForgeError } from '../errors';
import { parseJsonLossless } from '../json';

export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'qwen3'] as const;
export type ModelType = (typeof SUPPORTED_MODEL_TYPES)[number];

export interface RopeScaling {
  rope_type: string;
  factor?: number;
  low_freq_factor?: number;
  high_freq_factor?: number;
  original_max_position_embeddings?: number;
  [k: string]: unknown;
}

/** The fields of a dense decoder's config.json that merging and the forward pass use, normalised. */
export interface ModelConfig {
  /** config.json exactly as read (key order kept), for output configs that pass keys through. */
  raw: Record<string, unknown>;
  /** Each number's literal text in config.json by JSON path (`10000.0` stays a float in output configs). */
  literals: Record<string, string>;
  file: string;
  modelType: ModelType;
  architectures: string[];
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  /** Attention window (keys i-w < j <= i), or null for full causal attention. */
  slidingWindow: number | null;
  tieWordEmbeddings: boolean;
  /** Output dtype name as written in config.json (torch_dtype or dtype), if any. */
  dtype: string | null;
  bosTokenId: number | null;
  eosTokenId: number | null;
}

function num(raw: Record<string, unknown>, key: string, file: string, fallback?: number): number {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new ModelError('config_missing_key', `missing required key "${key}" (a positive number)`, { file, field: key });
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new ModelError('config_bad_value', `"${key}" must be a number, got ${JSON.stringify(v)}`, { file, field: key });
  }
  return v;
}

export function parseModelConfig(raw: Record<string, unknown>, file: string, literals: Record<string, string> = {}): ModelConfig {
  const modelType = raw.model_type;
  if (typeof modelType !== 'string') {
    throw new ModelError('config_missing_key', 'missing "model_type"', { file, field: 'model_type' });
  }
  if (!(SUPPORTED_MODEL_TYPES as readonly string[]).includes(modelType)) {
    throw new ModelError('unsupported_model_type', `model_type "${modelType}" is not supported as an input (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`, { file, field: 'model_type' });
  }
  const hiddenSize = num(raw, 'hidden_size', file);
  const numHeads = num(raw, 'num_attention_heads', file);
  const rope = (raw.rope_parameters ?? null) as Record<string, unknown> | null;
  const ropeTheta = typeof raw.rope_theta === 'number' ? raw.rope_theta : typeof rope?.rope_theta === 'number' ? (rope.rope_theta as number) : 10000;
  // Older configs say rope_scaling, transformers 5 says rope_parameters; "default" means no scaling.
  let ropeScaling = (raw.rope_scaling ?? null) as RopeScaling | null;
  if (!ropeScaling && rope && typeof rope.rope_type === 'string' && rope.rope_type !== 'default') ropeScaling = rope as RopeScaling;
  if (ropeScaling) {
    const t = (ropeScaling.rope_type ?? ropeScaling['type']) as string | undefined;
    ropeScaling = t === 'default' || t === undefined ? null : { ...ropeScaling, rope_type: t };
  }
  let slidingWindow: number | null = typeof raw.sliding_window === 'number' ? raw.sliding_window : null;
  if (modelType === 'qwen2' || modelType === 'qwen3') {
    // Qwen configs carry a sliding_window value that only applies when use_sliding_window is set.
    if (raw.use_sliding_window !== true) slidingWindow = null;
  }
  const dt = (raw.torch_dtype ?? raw.dtype ?? null) as string | null;
  return {
    raw,
    literals,
    file,
    modelType: modelType as ModelType,
    architectures: Array.isArray(raw.architectures) ? (raw.architectures as string[]) : [],
    hiddenSize,
    intermediateSize: num(raw, 'intermediate_size', file),
    numLayers: num(raw, 'num_hidden_layers', file),
    numHeads,
    numKvHeads: num(raw, 'num_key_value_heads', file, numHeads),
    headDim: num(raw, 'head_dim', file, hiddenSize / numHeads),
    vocabSize: num(raw, 'vocab_size', file),
    rmsNormEps: num(raw, 'rms_norm_eps', file, 1e-6),
    ropeTheta,
    ropeScaling,
    slidingWindow,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    dtype: typeof dt === 'string' ? dt : null,
    bosTokenId: typeof raw.bos_token_id === 'number' ? raw.bos_token_id : null,
    eosTokenId: typeof raw.eos_token_id === 'number' ? raw.eos_token_id : null,
  };
}

export async function readModelConfig(dir: string): Promise<ModelConfig> {
  const file = join(dir, 'config.json');
  let text: string;
  try {
    text = await readInputText(file, MODEL_CONFIG);
  } catch (e) {
    // A FIFO, a folder or a huge file in its place is said as such; only a missing file is "has no".
    if ((e as ForgeError).code === 'config_missing') throw new ModelError('missing_config', 'model folder has no config.json', { file });
    throw e;
  }
  let raw: unknown;
  let literals: Record<string, string>;
  try {
    ({ value: raw, literals } = parseJsonLossless(text));
  } catch (e) {
    throw new ModelError('bad_config', `config.json is not valid JSON (${(e as Error).message})`, { file });
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ModelError('bad_config', 'config.json must hold a JSON object', { file });
  return parseModelConfig(raw as Record<string, unknown>, file, literals);
}
