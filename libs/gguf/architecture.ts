/**
 * From our output (the plan's tensors and config.json) to GGUF: tensor names, shapes, types and the
 * `ARCH.*` hyperparameter keys, as llama.cpp's convert_hf_to_gguf.py derives them from the same folder
 * (facts read from its llama, deepseek and qwen model classes and its TextModel base).
 */
import { ForgeError } from '../errors';
import type { PlanTensor, MergePlan } from '../plan';
import type { GgufTensorType } from './format';
import type { GgufKv, GgufValue } from './types';

export const GGUF_TYPES = ['f32', 'f16', 'bf16', 'q8_0'] as const;
export type GgufOutType = (typeof GGUF_TYPES)[number];

export function parseGgufType(v: string, where: { field?: string; file?: string } = {}): GgufOutType {
  const t = v.toLowerCase();
  if ((GGUF_TYPES as readonly string[]).includes(t)) return t as GgufOutType;
  throw new ForgeError('bad_option', `GGUF type ${JSON.stringify(v)} is not one of ${GGUF_TYPES.join(', ')}`, { field: where.field ?? 'gguf', file: where.file });
}

export const ggufFileName = (t: GgufOutType) => `model-${t}.gguf`;

const FILE_TYPES: Record<GgufOutType, { ftype: number; tensor: GgufTensorType }> = {
  f32: { ftype: 0, tensor: 'F32' },
  f16: { ftype: 1, tensor: 'F16' },
  q8_0: { ftype: 7, tensor: 'Q8_0' },
  bf16: { ftype: 32, tensor: 'BF16' },
};

type Proj = 'gate' | 'up' | 'down';

interface ArchRule {
  gguf: string;
  /** llama.cpp's q/k row permutation for its rotary layout (llama-family converters). */
  permute: boolean;
  /** Order in which the converter emits a layer's expert stacks. */
  stacks: Proj[];
  /** Counts the converter waits for before stacking a layer's experts. */
  expertCountKey: string;
}

const RULES: Record<string, ArchRule> = {
  MixtralForCausalLM: { gguf: 'llama', permute: true, stacks: ['gate', 'down', 'up'], expertCountKey: 'num_local_experts' },
  DeepseekForCausalLM: { gguf: 'deepseek', permute: true, stacks: ['down', 'gate', 'up'], expertCountKey: 'n_routed_experts' },
  Qwen2MoeForCausalLM: { gguf: 'qwen2moe', permute: false, stacks: ['down', 'gate', 'up'], expertCountKey: 'num_experts' },
  Qwen3MoeForCausalLM: { gguf: 'qwen3moe', permute: false, stacks: ['down', 'gate', 'up'], expertCountKey: 'num_experts' },
};

/** A contiguous run of one output tensor's elements. */
export interface Segment {
  tensor: PlanTensor;
  /** Element offset and count within the tensor. */
  begin: number;
  count: number;
}

export interface GgufTensorSpec {
  name: string;
  /** GGUF order (ne0 first). */
  shape: number[];
  type: GgufTensorType;
  /** Concatenated in order: a 3-D expert stack is one segment per expert. */
  segments: Segment[];
  permuteGroupRows?: number;
  /** A tensor the converter computes rather than reads (rope_freqs): its bytes as stored, no segments. */
  data?: Buffer;
}

export interface GgufLayout {
  arch: string;
  metadata: GgufKv[];
  tensors: GgufTensorSpec[];
  /** Things a user should know about this GGUF (one line each). */
  warnings: string[];
}

const u32 = (value: number): GgufValue => ({ type: 'u32', value });
const f32 = (value: number): GgufValue => ({ type: 'f32', value });
const str = (value: string): GgufValue => ({ type: 'string', value });

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Non-expert tensor names (transformers -> GGUF). */
function mapName(name: string): string | null {
  const fixed: Record<string, string> = { 'model.embed_tokens.weight': 'token_embd.weight', 'model.norm.weight': 'output_norm.weight', 'lm_head.weight': 'output.weight' };
  if (fixed[name]) return fixed[name]!;
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
  if (!m) return null;
  const [, l, rest, suffix] = m;
  const layer: Record<string, string> = {
    input_layernorm: 'attn_norm',
    post_attention_layernorm: 'ffn_norm',
    'self_attn.q_proj': 'attn_q',
    'self_attn.k_proj': 'attn_k',
    'self_attn.v_proj': 'attn_v',
    'self_attn.o_proj': 'attn_output',
    'self_attn.q_norm': 'attn_q_norm',
    'self_attn.k_norm': 'attn_k_norm',
    'block_sparse_moe.gate': 'ffn_gate_inp',
    'mlp.gate': 'ffn_gate_inp',
    'mlp.shared_expert_gate': 'ffn_gate_inp_shexp',
    'mlp.shared_expert.gate_proj': 'ffn_gate_shexp',
    'mlp.shared_expert.up_proj': 'ffn_up_shexp',
    'mlp.shared_expert.down_proj': 'ffn_down_shexp',
    'mlp.shared_experts.gate_proj': 'ffn_gate_shexp',
    'mlp.shared_experts.up_proj': 'ffn_up_shexp',
    'mlp.shared_experts.down_proj': 'ffn_down_shexp',
    'mlp.gate_proj': 'ffn_gate',
    'mlp.up_proj': 'ffn_up',
    'mlp.down_proj': 'ffn_down',
  };
  const g = layer[rest!];
  return g ? `blk.${l}.${g}.${suffix}` : null;
}

const PROJ: Record<string, Proj> = { w1: 'gate', w2: 'down', w3: 'up', gate_proj: 'gate', up_proj: 'up', down_proj: 'down' };
const EXPERT = /^model\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$/;
const FUSED = /^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$/;

/** The converter's type rules: norms, 1-D tensors, routers and biases stay F32; Q8_0 needs rows of whole blocks. */
function tensorType(name: string, shape: number[], out: GgufTensorType): GgufTensorType {
  if (shape.length <= 1 || name.endsWith('_norm.weight')) return 'F32';
  if (/\.ffn_gate_inp(_shexp)?\.weight$/.test(name) || !name.endsWith('.weight')) return 'F32';
  // gguf-py refuses Q8_0 for rows that are not whole blocks and falls back to F16.
  if (out === 'Q8_0' && shape[0]! % 32 !== 0) return 'F16';
  return out;
}

function num(config: Record<string, unknown>, keys: string[]): number | undefined {
  for (const k of keys) if (typeof config[k] === 'number') return config[k] as number;
  return undefined;
}

/** The `ARCH.*` and `general.*` keys the converter writes before the tokenizer's, in its order. */
function archMetadata(arch: string, gguf: string, config: Record<string, unknown>, type: GgufOutType): GgufKv[] {
  const kv = new Map<string, GgufValue>();
  const A = (k: string) => `${gguf}.${k}`;
  kv.set('general.architecture', str(gguf));
  kv.set('general.type', str('model'));
  const layers = num(config, ['n_layers', 'num_hidden_layers', 'n_layer', 'num_layers'])!;
  kv.set(A('block_count'), u32(layers));
  const put = (key: string, keys: string[], as: (v: number) => GgufValue) => {
    const v = num(config, keys);
    if (v !== undefined) kv.set(key, as(v));
  };
  put(A('context_length'), ['max_position_embeddings', 'n_ctx', 'n_positions', 'max_length', 'max_sequence_length', 'model_max_length'], u32);
  put(A('embedding_length'), ['hidden_size', 'n_embd', 'dim'], u32);
  put(A('feed_forward_length'), ['prefix_dense_intermediate_size', 'dense_intermediate_size', 'intermediate_size', 'n_inner', 'hidden_dim'], u32);
  put(A('attention.head_count'), ['num_attention_heads', 'n_head', 'n_heads'], u32);
  put(A('attention.head_count_kv'), ['num_key_value_heads', 'n_kv_heads'], u32);
  // rope: rope_parameters (transformers 5) or rope_scaling, with rope_theta mirrored into it.
  const rope = { ...((config.rope_parameters ?? config.rope_scaling ?? {}) as Record<string, unknown>) };
  const theta = num(config, ['global_rope_theta', 'rope_global_theta', 'rope_theta_global', 'rope_theta', 'rotary_emb_base']);
  if (rope.rope_theta === undefined && theta !== undefined) rope.rope_theta = theta;
  if (rope.rope_type === undefined && rope.type !== undefined) rope.rope_type = rope.type;
  const ropeType = typeof rope.rope_type === 'string' ? rope.rope_type : undefined;
  if (ropeType !== undefined && ropeType !== 'default' && ropeType.toLowerCase() !== 'llama3') {
    if (ropeType === 'linear' && typeof rope.factor === 'number') {
      kv.set(A('rope.scaling.type'), str('linear'));
      kv.set(A('rope.scaling.factor'), f32(rope.factor));
    } else if (ropeType === 'yarn' && typeof rope.factor === 'number') {
      kv.set(A('rope.scaling.type'), str('yarn'));
      kv.set(A('rope.scaling.factor'), f32(rope.factor));
      kv.set(A('rope.scaling.original_context_length'), u32(rope.original_max_position_embeddings as number));
    } else {
      throw new ForgeError('unsupported', `rope type ${ropeType} of the base is not supported in GGUF output yet`, { field: 'rope_scaling', file: 'config.json' });
    }
  }
  if (typeof rope.rope_theta === 'number') kv.set(A('rope.freq_base'), f32(rope.rope_theta));
  put(A('attention.layer_norm_rms_epsilon'), ['rms_norm_eps', 'norm_eps'], f32);
  put(A('expert_count'), ['num_local_experts', 'num_experts', 'n_routed_experts'], u32);
  put(A('expert_used_count'), ['num_experts_per_tok', 'num_experts_per_token', 'top_k_experts'], u32);
  const score = config.scoring_func ?? config.score_function ?? config.score_func;
  if (score === 'softmax') kv.set(A('expert_gating_func'), u32(1));
  else if (score === 'sigmoid') kv.set(A('expert_gating_func'), u32(2));
  else if (score !== undefined && score !== null) throw new ForgeError('unsupported', `scoring_func ${String(score)} is not supported in GGUF output`, { field: 'scoring_func', file: 'config.json' });
  if (typeof config.head_dim === 'number') {
    kv.set(A('attention.key_length'), u32(config.head_dim));
    kv.set(A('attention.value_length'), u32(config.head_dim));
  }
  kv.set('general.file_type', u32(FILE_TYPES[type].ftype));
  const headDim = typeof config.head_dim === 'number' ? config.head_dim : (config.hidden_size as number) / (config.num_attention_heads as number);
  if (arch === 'MixtralForCausalLM') {
    kv.set(A('vocab_size'), u32(config.vocab_size as number));
    kv.set(A('rope.dimension_count'), u32(headDim));
  } else if (arch === 'DeepseekForCausalLM') {
    kv.set(A('rope.dimension_count'), u32(headDim));
    kv.set(A('rope.scaling.type'), str('none'));
    kv.set(A('leading_dense_block_count'), u32(config.first_k_dense_replace as number));
    kv.set(A('vocab_size'), u32(config.vocab_size as number));
    kv.set(A('expert_feed_forward_length'), u32(config.moe_intermediate_size as number));
    kv.set(A('expert_weights_scale'), f32(1.0));
    kv.set(A('expert_count'), u32(config.n_routed_experts as number));
    kv.set(A('expert_shared_count'), u32(config.n_shared_experts as number));
  } else {
    put(A('expert_feed_forward_length'), ['moe_intermediate_size'], u32);
    put(A('expert_shared_feed_forward_length'), ['shared_expert_intermediate_size'], u32);
  }
  kv.set('general.quantization_version', u32(2));
  return [...kv].map(([key, value]) => ({ key, value }));
}

const float32Number = (v: unknown, field: string, fallback: number): number => {
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ForgeError('bad_config', `rope_scaling.${field} must be a finite number, got ${JSON.stringify(v)}`, { file: 'config.json', field: `rope_scaling.${field}` });
  return v;
};

/**
 * llama3 rope's per-frequency factors (llama.cpp's rope_freqs.weight), or null where the rope is not llama3:
 * the converter's LlamaModel.generate_extra_tensors, each step in float32 as torch computes it there (a
 * Python number meeting a float32 tensor is made float32 first; `x / tensor` is torch's reciprocal times x):
 * freqs = 1 / base^(arange(0, dim, 2) / dim); wavelen = 2π / freq; factor 1 below the high-frequency
 * wavelength, `factor` above the low-frequency one, and between them 1 / ((1 - smooth) / factor + smooth),
 * smooth = (old_context_len / wavelen - low) / (high - low).
 */
export function llama3RopeFactors(config: Record<string, unknown>): Float32Array | null {
  const params = (config.rope_parameters ?? config.rope_scaling ?? null) as Record<string, unknown> | null;
  const rope = ((params?.full_attention as Record<string, unknown> | undefined) ?? params) as Record<string, unknown> | null;
  const type = rope?.rope_type ?? rope?.type;
  if (!rope || typeof type !== 'string' || type.toLowerCase() !== 'llama3') return null;
  const fr = Math.fround;
  const theta = num(config, ['global_rope_theta', 'rope_global_theta', 'rope_theta_global', 'rope_theta', 'rotary_emb_base']);
  const base = float32Number(rope.rope_theta ?? theta, 'rope_theta', 10000);
  const dim = typeof config.head_dim === 'number' ? config.head_dim : Math.floor((config.hidden_size as number) / (config.num_attention_heads as number));
  const factor = float32Number(rope.factor, 'factor', 8);
  const low = float32Number(rope.low_freq_factor, 'low_freq_factor', 1);
  const high = float32Number(rope.high_freq_factor, 'high_freq_factor', 4);
  const old = float32Number(rope.original_max_position_embeddings ?? config.original_max_position_embeddings, 'original_max_position_embeddings', 8192);
  // Python floats, compared with float32 tensors as float32.
  const lowWavelen = fr(old / low);
  const highWavelen = fr(old / high);
  const twoPi = fr(2 * Math.PI);
  const out = new Float32Array(Math.ceil(dim / 2));
  for (let i = 0; i < out.length; i++) {
    // torch's float32 pow: the correctly rounded value (its vectorised powf is within an ulp of it).
    const p = fr(fr(base) ** fr(fr(2 * i) / dim));
    const freq = fr(1 / p);
    const wavelen = fr(fr(1 / freq) * twoPi);
    if (wavelen < highWavelen) out[i] = 1;
    else if (wavelen > lowWavelen) out[i] = fr(factor);
    else {
      const smooth = fr(fr(fr(fr(1 / wavelen) * fr(old)) - fr(low)) / fr(high - low));
      out[i] = fr(1 / fr(fr(fr(1 - smooth) / fr(factor)) + smooth));
    }
  }
  return out;
}

/**
 * The order in which the converter meets the output's tensors: shard files by name, each shard's tensors
 * sorted by name.
 */
export function converterOrder(shards: PlanTensor[][]): PlanTensor[] {
  return shards.flatMap((s) => [...s].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)));
}

/**
 * The GGUF layout of a plan: tensors in the order the converter emits them when it reads the output's
 * shards (`fileOrder`, from converterOrder), expert stacks emitted once a layer's experts are
 * all seen, as it does.
 */
export function ggufLayout(plan: MergePlan, fileOrder: PlanTensor[], type: GgufOutType): GgufLayout {
  const config = plan.config;
  const arch = (config.architectures as string[] | undefined)?.[0] ?? '';
  const rule = RULES[arch];
  if (!rule) throw new ForgeError('unsupported', `GGUF output of ${arch || 'this architecture'} is not supported (Mixtral, DeepSeek-MoE, Qwen2-MoE and Qwen3-MoE are)`, { file: 'config.json', field: 'architectures' });
  if (arch === 'DeepseekForCausalLM' && !(typeof config.n_shared_experts === 'number' && config.n_shared_experts > 0)) {
    throw new ForgeError('unsupported', `GGUF output of a DeepSeek-MoE without shared experts is not supported: llama.cpp's deepseek graph needs one (its converter stops on n_shared_experts null)`, { file: 'config.json', field: 'n_shared_experts' });
  }
  const out = FILE_TYPES[type].tensor;
  const nHead = config.num_attention_heads as number;
  const nKv = (config.num_key_value_heads as number | undefined) ?? nHead;
  const E = config[rule.expertCountKey] as number;
  const tensors: GgufTensorSpec[] = [];
  const add = (name: string, torchShape: number[], segments: Segment[], permuteHeads?: number) => {
    const shape = [...torchShape].reverse();
    const t: GgufTensorSpec = { name, shape, type: tensorType(name, shape, out), segments };
    if (permuteHeads) t.permuteGroupRows = torchShape[0]! / permuteHeads;
    tensors.push(t);
  };
  const whole = (t: PlanTensor): Segment => ({ tensor: t, begin: 0, count: numel(t.shape) });
  // The converter's generated tensors come before the folder's (generate_extra_tensors, then get_tensors).
  if (rule.gguf === 'llama') {
    const factors = llama3RopeFactors(config);
    if (factors) tensors.push({ name: 'rope_freqs.weight', shape: [factors.length], type: 'F32', segments: [], data: Buffer.from(factors.buffer, factors.byteOffset, factors.byteLength) });
  }
  const pending = new Map<number, Map<string, PlanTensor>>();
  const stackName = (l: number, p: Proj) => `blk.${l}.ffn_${p}_exps.weight`;
  for (const t of fileOrder) {
    const ex = EXPERT.exec(t.name);
    if (ex) {
      const l = Number(ex[1]);
      const bucket = pending.get(l) ?? pending.set(l, new Map()).get(l)!;
      bucket.set(`${PROJ[ex[3]!]}/${Number(ex[2])}`, t);
      if (bucket.size >= 3 * E) {
        for (const p of rule.stacks) {
          const parts: PlanTensor[] = [];
          for (let e = 0; e < E; e++) {
            const pt = bucket.get(`${p}/${e}`);
            if (!pt) throw new Error(`internal: expert ${e} ${p} of layer ${l} missing`);
            parts.push(pt);
          }
          add(stackName(l, p), [E, ...parts[0]!.shape], parts.map(whole));
        }
        pending.delete(l);
      }
      continue;
    }
    const fused = FUSED.exec(t.name);
    if (fused) {
      const l = Number(fused[1]);
      const [n, rows, cols] = t.shape as [number, number, number];
      const per = rows * cols;
      if (fused[2] === 'down_proj') {
        add(stackName(l, 'down'), [n, rows, cols], [whole(t)]);
      } else {
        // gate_up_proj [E, 2I, H]: each expert's first I rows are gate, the next I up.
        const half = per / 2;
        add(stackName(l, 'gate'), [n, rows / 2, cols], Array.from({ length: n }, (_, e) => ({ tensor: t, begin: e * per, count: half })));
        add(stackName(l, 'up'), [n, rows / 2, cols], Array.from({ length: n }, (_, e) => ({ tensor: t, begin: e * per + half, count: half })));
      }
      continue;
    }
    const name = mapName(t.name);
    if (!name) throw new ForgeError('unsupported', `no GGUF name for tensor ${t.name} of ${arch}`, { tensor: t.name });
    const isQ = /\.self_attn\.q_proj\.(weight|bias)$/.test(t.name);
    const isK = /\.self_attn\.k_proj\.(weight|bias)$/.test(t.name);
    add(name, t.shape, [whole(t)], rule.permute && (isQ || isK) ? (isQ ? nHead : nKv) : undefined);
  }
  if (pending.size > 0) throw new Error(`internal: unstacked experts in layers ${[...pending.keys()].join(', ')}`);
  const warnings: string[] = [];
  const topK = config.num_experts_per_tok as number | undefined;
  if ((rule.gguf === 'qwen2moe' || rule.gguf === 'deepseek') && config.norm_topk_prob === true && (topK ?? 1) > 1) {
    warnings.push(`llama.cpp's ${rule.gguf} graph ignores norm_topk_prob: the ${topK} chosen experts' weights are not renormalised to sum to 1 as transformers does with this config, so the GGUF's outputs differ from the safetensors model's`);
  }
  return { arch: rule.gguf, metadata: archMetadata(arch, rule.gguf, config, type), tensors, warnings };
}
