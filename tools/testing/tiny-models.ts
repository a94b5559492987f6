/** Tiny random dense checkpoints (config.json + safetensors), shared by the tests and the benchmark. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeShard, encodeFloats, type OutputTensorSpec } from '../../libs/safetensors';

export interface TinyModelSpec {
  modelType: 'llama' | 'mistral' | 'qwen2' | 'qwen3';
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  /** Defaults to hidden / heads; qwen3 may decouple it. */
  headDim?: number;
  intermediate: number;
  vocab: number;
  dtype?: 'F32' | 'F16' | 'BF16';
  slidingWindow?: number | null;
  ropeTheta?: number;
  ropeScaling?: Record<string, unknown>;
  /** Write the tensors into two shards with an index. */
  sharded?: boolean;
  seed?: number;
  /** Tensor names to leave out (for error tests). */
  omit?: string[];
}

/** xorshift32's raw 32-bit outputs (a zero seed starts from `zeroSeed`): deterministic, so a failure reproduces. */
export function xorshift32(seed: number, zeroSeed = 0x9e3779b9): () => number {
  let s = seed >>> 0 || zeroSeed;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

/** xorshift32 uniform in [-1, 1): deterministic and fast enough for hundreds of millions of values. */
function rng(seed: number): () => number {
  const next = xorshift32(seed);
  return () => next() / 2147483648 - 1;
}

interface GenTensor extends OutputTensorSpec {
  /** value = center + scale * u, u uniform in [-1, 1) */
  center: number;
  scale: number;
}

export function tinyTensors(spec: TinyModelSpec): GenTensor[] {
  const H = spec.hidden, D = spec.headDim ?? H / spec.heads, I = spec.intermediate;
  const q = spec.heads * D, kv = spec.kvHeads * D;
  const dtype = spec.dtype ?? 'F32';
  const out: GenTensor[] = [];
  const add = (name: string, shape: number[], center: number, scale: number) => out.push({ name, dtype, shape, center, scale });
  const proj = (name: string, o: number, i: number) => add(name, [o, i], 0, Math.sqrt(3 / i));
  add('model.embed_tokens.weight', [spec.vocab, H], 0, 1);
  for (let l = 0; l < spec.layers; l++) {
    const p = `model.layers.${l}.`;
    add(p + 'input_layernorm.weight', [H], 1, 0.2);
    proj(p + 'self_attn.q_proj.weight', q, H);
    proj(p + 'self_attn.k_proj.weight', kv, H);
    proj(p + 'self_attn.v_proj.weight', kv, H);
    if (spec.modelType === 'qwen2') {
      add(p + 'self_attn.q_proj.bias', [q], 0, 0.3);
      add(p + 'self_attn.k_proj.bias', [kv], 0, 0.3);
      add(p + 'self_attn.v_proj.bias', [kv], 0, 0.3);
    }
    if (spec.modelType === 'qwen3') {
      add(p + 'self_attn.q_norm.weight', [D], 1, 0.2);
      add(p + 'self_attn.k_norm.weight', [D], 1, 0.2);
    }
    proj(p + 'self_attn.o_proj.weight', H, q);
    add(p + 'post_attention_layernorm.weight', [H], 1, 0.2);
    proj(p + 'mlp.gate_proj.weight', I, H);
    proj(p + 'mlp.up_proj.weight', I, H);
    proj(p + 'mlp.down_proj.weight', H, I);
  }
  add('model.norm.weight', [H], 1, 0.2);
  const omit = new Set(spec.omit ?? []);
  return out.filter((t) => !omit.has(t.name));
}

function* values(t: GenTensor, next: () => number): Generator<Buffer> {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const chunk = 1 << 20;
  for (let done = 0; done < n; done += chunk) {
    const m = Math.min(chunk, n - done);
    const v = new Float32Array(m);
    for (let i = 0; i < m; i++) v[i] = t.center + t.scale * next();
    yield encodeFloats(v, t.dtype as 'F32' | 'F16' | 'BF16');
  }
}

/** The config.json of a generated model. */
export function configJson(spec: TinyModelSpec): Record<string, unknown> {
  const D = spec.headDim ?? spec.hidden / spec.heads;
  const dtypeName = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[spec.dtype ?? 'F32'];
  const config: Record<string, unknown> = {
    architectures: [{ llama: 'LlamaForCausalLM', mistral: 'MistralForCausalLM', qwen2: 'Qwen2ForCausalLM', qwen3: 'Qwen3ForCausalLM' }[spec.modelType]],
    model_type: spec.modelType,
    hidden_size: spec.hidden,
    intermediate_size: spec.intermediate,
    num_hidden_layers: spec.layers,
    num_attention_heads: spec.heads,
    num_key_value_heads: spec.kvHeads,
    head_dim: D,
    vocab_size: spec.vocab,
    rms_norm_eps: 1e-5,
    rope_theta: spec.ropeTheta ?? 10000,
    max_position_embeddings: 4096,
    torch_dtype: dtypeName,
    bos_token_id: 0,
    eos_token_id: 1,
    tie_word_embeddings: false,
  };
  if (spec.ropeScaling) config.rope_scaling = spec.ropeScaling;
  if (spec.modelType === 'mistral') config.sliding_window = spec.slidingWindow ?? null;
  return config;
}

export async function writeTinyModel(dir: string, spec: TinyModelSpec): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(configJson(spec), null, 2));
  const tensors = tinyTensors(spec);
  const next = rng(spec.seed ?? 1);
  const gen = (t: OutputTensorSpec) => values(t as GenTensor, next);
  if (!spec.sharded) {
    await writeShard(join(dir, 'model.safetensors'), tensors, gen);
    return dir;
  }
  const half = Math.ceil(tensors.length / 2);
  const shards = [tensors.slice(0, half), tensors.slice(half)];
  const weightMap: Record<string, string> = {};
  for (const [i, s] of shards.entries()) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    await writeShard(join(dir, file), s, gen);
    for (const t of s) weightMap[t.name] = file;
  }
  await writeFile(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
  return dir;
}
