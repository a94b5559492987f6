import { GATE_MODES, promptFreeModes } from '../gates';
import { CONFIG_FLOATS, configDtype, copied, expertTensor, fillDefaults, baseConfigCopy, hasPrompts, modelTypeProblem, router, sortedKeys, zerosTensor, type MlpProj, qwenMoeDefaults } from './common';
import type { PlanTensor } from '../plan';
import type { ArchContext, OutputArchitecture } from './types';

/** The Qwen2 weight list's MLP order (used for every base, Llama and Mistral included). */
const QWEN2_MLP: readonly MlpProj[] = ['down_proj', 'gate_proj', 'up_proj'];

/**
 * One attention bias: the base's own (Qwen2), else zeros in the output dtype (float32 when there is none), as
 * Qwen2-MoE always has q/k/v biases. The reference sizes them with hidden_size / num_attention_heads and so
 * writes wrong lengths for configs with a decoupled head_dim; we use the config's head_dim when it has one.
 */
function bias(ctx: ArchContext, layer: number, proj: 'q_proj' | 'k_proj' | 'v_proj'): PlanTensor {
  const name = `model.layers.${layer}.self_attn.${proj}.bias`;
  if (ctx.base.weights.has(name)) return copied(ctx, name);
  const c = ctx.base.config;
  const heads = proj === 'q_proj' ? c.numHeads : c.numKvHeads;
  return zerosTensor(name, ctx.outDtype ?? 'F32', heads * c.headDim);
}

/** Qwen MoE / Qwen2-MoE: exactly one shared expert, gated by `mlp.shared_expert_gate` [1, H]. */
export const qwen2Moe: OutputArchitecture = {
  name: 'Qwen MoE',
  fusedLayout: false,
  llamaCppReadsFused: false,
  noiseDrawOrder: { perExpert: false, projs: QWEN2_MLP },
  rejects(ctx) {
    if (ctx.shared.length !== 1) return `Qwen MoE needs exactly one shared expert (got ${ctx.shared.length})`;
    // The modes that skip is_bad_config's prompt checks are exempt here too (uniform_random is not), as in the reference.
    if (GATE_MODES[ctx.gateMode].needsPrompts && !hasPrompts(ctx.shared[0]!.spec.positive_prompts)) {
      return `Qwen MoE needs positive prompts on its shared expert unless gate_mode is ${promptFreeModes()} (gate_mode is ${ctx.gateMode})`;
    }
    return modelTypeProblem(ctx, ['llama', 'mistral', 'qwen2']);
  },
  // The shared expert's gate row follows the routed ones in G and becomes shared_expert_gate.
  gatedSharedExperts: () => 1,
  floatKeys: CONFIG_FLOATS,
  config(ctx) {
    const c = ctx.base.config;
    const out = baseConfigCopy(ctx);
    // Qwen2MoeConfig (transformers 4.57) constructor defaults, which save_pretrained always writes.
    fillDefaults(out, {
      ...qwenMoeDefaults(c),
      qkv_bias: true,
    });
    out.architectures = ['Qwen2MoeForCausalLM'];
    out.model_type = 'qwen2_moe';
    out.num_experts = ctx.experts.length;
    out.num_experts_per_tok = ctx.recipe.experts_per_token;
    out.decoder_sparse_step = 1;
    out.norm_topk_prob = true;
    out.sliding_window = null;
    out.use_sliding_window = false;
    out.shared_expert_intermediate_size = c.intermediateSize;
    out.moe_intermediate_size = c.intermediateSize;
    // The head is always written (see tensors), so it is never tied.
    out.tie_word_embeddings = false;
    configDtype(ctx, out);
    return sortedKeys(out);
  },
  tensors(ctx) {
    const L = ctx.base.config.numLayers;
    const out: PlanTensor[] = [copied(ctx, 'model.embed_tokens.weight')];
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}`;
      out.push(copied(ctx, `${p}.input_layernorm.weight`));
      for (const proj of QWEN2_MLP) {
        for (const ex of ctx.experts) out.push(expertTensor(ctx, ex, l, proj, `${p}.mlp.experts.${ex.index}.${proj}.weight`));
        out.push(expertTensor(ctx, ctx.shared[0]!, l, proj, `${p}.mlp.shared_expert.${proj}.weight`));
      }
      out.push(
        copied(ctx, `${p}.post_attention_layernorm.weight`),
        bias(ctx, l, 'k_proj'),
        copied(ctx, `${p}.self_attn.k_proj.weight`),
        copied(ctx, `${p}.self_attn.o_proj.weight`),
        bias(ctx, l, 'q_proj'),
        copied(ctx, `${p}.self_attn.q_proj.weight`),
        bias(ctx, l, 'v_proj'),
        copied(ctx, `${p}.self_attn.v_proj.weight`),
      );
    }
    // llama.cpp's qwen2moe loader requires output.weight: a tied base gets its embeddings written as the head.
    out.push(copied(ctx, 'model.norm.weight'), ctx.base.weights.has('lm_head.weight') ? copied(ctx, 'lm_head.weight') : copied(ctx, 'model.embed_tokens.weight', 'lm_head.weight'));
    const E = ctx.experts.length;
    for (let l = 0; l < L; l++) {
      out.push(router(ctx, l, `model.layers.${l}.mlp.gate.weight`), router(ctx, l, `model.layers.${l}.mlp.shared_expert_gate.weight`, [E]));
    }
    return out;
  },
};
