/**
 * Generated checkpoints for the benchmarks (config.json + model.safetensors + a byte-level tokenizer).
 * The benchmark keeps its own copy of these generators so that it does not depend on the test helpers.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { writeShard, encodeFloats, type OutputTensorSpec } from '../libs/safetensors';

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
  seed?: number;
}

/** xorshift32 uniform in [-1, 1): deterministic. */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 0x9e3779b9;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2147483648 - 1;
  };
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
  return out;
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

function configJson(spec: TinyModelSpec): Record<string, unknown> {
  const D = spec.headDim ?? spec.hidden / spec.heads;
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
    torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[spec.dtype ?? 'F32'],
    bos_token_id: 0,
    eos_token_id: 1,
    tie_word_embeddings: false,
  };
  if (spec.modelType === 'mistral') config.sliding_window = spec.slidingWindow ?? null;
  return config;
}

/** A small random model with values from a seeded xorshift (the forward-pass benchmark's model). */
export async function writeTinyModel(dir: string, spec: TinyModelSpec): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'config.json'), JSON.stringify(configJson(spec), null, 2));
  const next = rng(spec.seed ?? 1);
  await writeShard(join(dir, 'model.safetensors'), tinyTensors(spec), (t) => values(t as GenTensor, next));
  return dir;
}

const FAST_CHUNK_BYTES = 16 << 20;

/**
 * Random bf16 bytes at memory speed: crypto noise with each value's exponent forced into a small finite
 * range, ±[2^-7, 2^-3) for matrices and [1, 2) for norm weights. Not reproducible (no seed): only sizes matter.
 */
function* fastBf16(t: OutputTensorSpec): Generator<Buffer> {
  const total = t.shape.reduce((a, b) => a * b, 1) * 2;
  const norm = t.shape.length === 1;
  for (let done = 0; done < total; done += FAST_CHUNK_BYTES) {
    const n = Math.min(FAST_CHUNK_BYTES, total - done);
    const buf = Buffer.allocUnsafe(n);
    randomFillSync(buf);
    // n is even; 4 bytes (two values) at a time where aligned, the odd tail value alone.
    const words = new Uint32Array(buf.buffer, buf.byteOffset, n >>> 2);
    if (norm) for (let i = 0; i < words.length; i++) words[i] = (words[i]! & 0x007f007f) | 0x3f803f80;
    else for (let i = 0; i < words.length; i++) words[i] = (words[i]! & 0x81ff81ff) | 0x3c003c00;
    if (n & 2) {
      const v = buf.readUInt16LE(n - 2);
      buf.writeUInt16LE(norm ? (v & 0x007f) | 0x3f80 : (v & 0x81ff) | 0x3c00, n - 2);
    }
    yield buf;
  }
}

/** A llama-like bf16 model written tensor by tensor with the library's shard writer, plus a tokenizer. */
export async function writeFastModel(dir: string, spec: Omit<TinyModelSpec, 'dtype' | 'seed'>): Promise<{ dir: string; bytes: number }> {
  await mkdir(dir, { recursive: true });
  const full: TinyModelSpec = { ...spec, dtype: 'BF16' };
  await writeFile(join(dir, 'config.json'), JSON.stringify(configJson(full), null, 2));
  // Untied embeddings, as the config says: an lm_head of its own, like most real checkpoints.
  const tensors = [...tinyTensors(full), { name: 'lm_head.weight', dtype: 'BF16', shape: [spec.vocab, spec.hidden] }];
  const bytes = await writeShard(join(dir, 'model.safetensors'), tensors, fastBf16);
  await writeByteTokenizer(dir);
  return { dir, bytes };
}

/** GPT-2's byte-to-unicode table, the alphabet of a byte-level BPE vocabulary. */
function byteAlphabet(): string[] {
  const keep: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) keep.push(b);
  for (let b = 0xa1; b <= 0xac; b++) keep.push(b);
  for (let b = 0xae; b <= 0xff; b++) keep.push(b);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(keep.includes(b) ? b : 256 + extra++);
  return out;
}

/**
 * A byte-level BPE tokenizer without merges: <s>, </s>, <unk>, then one token per byte (ids 3..258), so
 * a prompt of n ASCII characters is n + 1 tokens with its BOS.
 */
export async function writeByteTokenizer(dir: string): Promise<void> {
  const special = ['<s>', '</s>', '<unk>'];
  const vocab: Record<string, number> = {};
  special.forEach((s, i) => (vocab[s] = i));
  byteAlphabet().forEach((c, b) => (vocab[c] = 3 + b));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [] },
  };
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', model_max_length: 4096, tokenizer_class: 'PreTrainedTokenizerFast' }, null, 2));
}
