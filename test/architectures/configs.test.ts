/** config.json details that the tiny-model merges do not reach: transformers-5 bases, sliding windows, no dtype. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deepseek, qwen2Moe, qwen3Moe } from '../../libs/architectures/registry';
import type { ArchContext, ModelSource } from '../../libs/architectures/types';
import { parseModelConfig } from '../../libs/model-folder/config';
import type { FloatDtype } from '../../libs/safetensors/dtype';

function ctxOf(raw: Record<string, unknown>, opts: { outDtype?: FloatDtype | null; shared?: number; experts?: number } = {}): ArchContext {
  const src: ModelSource = { key: 'k', ref: 'org/base', dir: '/nowhere', config: parseModelConfig(raw, '/nowhere/config.json'), weights: { has: () => false, get: () => { throw new Error('no weights'); } } };
  const experts = Array.from({ length: opts.experts ?? 2 }, (_, index) => ({ spec: { source_model: 'x', positive_prompts: [`p${index}`] }, model: src, index, shared: false }));
  const shared = Array.from({ length: opts.shared ?? 0 }, (_, index) => ({ spec: { source_model: 'x' }, model: src, index, shared: true }));
  return {
    recipe: { base_model: 'org/base', experts: experts.map((e) => e.spec), gate_mode: 'random', experts_per_token: 2 },
    gateMode: 'random',
    base: src,
    experts,
    shared,
    outDtype: opts.outDtype === undefined ? 'BF16' : opts.outDtype,
    layout: 'classic',
    seed: 0,
  };
}

const v5Llama = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 512,
  dtype: 'float32',
  rope_parameters: { rope_theta: 500000.0, rope_type: 'default' },
  transformers_version: '5.17.0',
};

test('DeepSeek: a transformers-5 base keeps its keys in place; torch_dtype is appended after auto_map', () => {
  const cfg = deepseek.config(ctxOf(v5Llama));
  assert.deepEqual(Object.keys(cfg), [...Object.keys(v5Llama), 'n_routed_experts', 'n_shared_experts', 'num_experts_per_tok', 'first_k_dense_replace', 'moe_layer_freq', 'scoring_func', 'norm_topk_prob', 'moe_intermediate_size', 'auto_map', 'torch_dtype']);
  assert.equal(cfg.torch_dtype, 'bfloat16');
  assert.equal(cfg.dtype, 'bfloat16', 'the base dtype key follows the output dtype');
  assert.equal(cfg.n_shared_experts, null, 'no shared expert: null, as the reference');
  assert.equal(cfg.transformers_version, '5.17.0', 'the dict is written as is');
  assert.equal(deepseek.config(ctxOf(v5Llama, { shared: 1 })).n_shared_experts, 1);
  // No output dtype: no torch_dtype key, and the base's own left alone.
  const none = deepseek.config(ctxOf({ ...v5Llama, dtype: undefined }, { outDtype: null }));
  assert.ok(!('torch_dtype' in none));
});

test('Qwen MoE and Qwen3 MoE: rope_theta from rope_parameters, sliding windows as the config classes do', () => {
  const q2 = qwen2Moe.config(ctxOf({ ...v5Llama, sliding_window: 4096, use_sliding_window: true }, { shared: 1 }));
  assert.equal(q2.rope_theta, 500000);
  assert.equal(q2.sliding_window, null);
  assert.equal(q2.use_sliding_window, false);
  assert.equal(q2.dtype, 'bfloat16');
  assert.ok(!('transformers_version' in q2));
  assert.deepEqual(Object.keys(q2), Object.keys(q2).sort());
  assert.equal(q2.rope_scaling, null);
  const llama3 = { rope_type: 'llama3', rope_theta: 500000.0, factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };
  assert.deepEqual(qwen2Moe.config(ctxOf({ ...v5Llama, rope_parameters: llama3 }, { shared: 1 })).rope_scaling, llama3, 'rope scaling kept for transformers 4 readers');

  const qwen3 = { ...v5Llama, architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', head_dim: 32 };
  assert.equal(qwen3Moe.config(ctxOf(qwen3)).sliding_window, null);
  const windowed = qwen3Moe.config(ctxOf({ ...qwen3, use_sliding_window: true, sliding_window: 64 }));
  assert.equal(windowed.sliding_window, 64, 'kept when use_sliding_window is set (the reference does not override it)');
  assert.equal(windowed.num_experts, 2);
  assert.ok(!('num_local_experts' in windowed));
  assert.equal(windowed.head_dim, 32);
});
