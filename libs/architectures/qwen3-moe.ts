import { CONFIG_FLOATS, baseConfigCopy, configDtype, copied, copiedIfPresent, expertTensor, fillDefaults, fusedExperts, modelTypeProblem, router, sortedKeys, type MlpProj, qwenMoeDefaults } from './common';
import type { PlanTensor } from '../plan';
import type { OutputArchitecture } from './types';

/** The Qwen3 weight list's MLP order. */
const QWEN3_MLP: readonly MlpProj[] = ['down_proj', 'gate_proj', 'up_proj'];

/**
 * Qwen3 MoE: no shared experts. Classic per-expert `mlp.experts.E.*` (the layout of the published
 * Qwen3-MoE checkpoints) by default, transformers 5's fused `gate_up_proj`/`down_proj` with layout 'fused'.
 */
export const qwen3Moe: OutputArchitecture = {
  name: 'Qwen3 MoE',
  fusedLayout: true,
  llamaCppReadsFused: true,
  noiseDrawOrder: { perExpert: true, projs: ['gate_proj', 'up_proj', 'down_proj'] },
  rejects(ctx) {
    if (ctx.shared.length > 0) return `Qwen3 MoE does not support shared experts (got ${ctx.shared.length})`;
    return modelTypeProblem(ctx, ['qwen3']);
  },
  gatedSharedExperts: () => 0,
  floatKeys: CONFIG_FLOATS,
  config(ctx) {
    const c = ctx.base.config;
    const out = baseConfigCopy(ctx);
    // Qwen3MoeConfig (transformers 4.57) constructor defaults, which save_pretrained always writes.
    fillDefaults(out, {
      ...qwenMoeDefaults(c),
      attention_bias: false,
      use_sliding_window: false,
    });
    // The class keeps sliding_window only when use_sliding_window is set; the reference does not override it.
    out.sliding_window = out.use_sliding_window === true ? (out.sliding_window ?? 4096) : null;
    out.architectures = ['Qwen3MoeForCausalLM'];
    out.model_type = 'qwen3_moe';
    // Spec 11: `num_experts`, the key of the published checkpoints and of transformers 4.
    out.num_experts = ctx.experts.length;
    out.num_experts_per_tok = ctx.recipe.experts_per_token;
    out.decoder_sparse_step = 1;
    out.norm_topk_prob = true;
    out.moe_intermediate_size = c.intermediateSize;
    configDtype(ctx, out);
    return sortedKeys(out);
  },
  tensors(ctx) {
    const L = ctx.base.config.numLayers;
    const out: PlanTensor[] = [copied(ctx, 'model.embed_tokens.weight')];
    const fused = ctx.layout === 'fused';
    const attn = (p: string) => [
      copied(ctx, `${p}.post_attention_layernorm.weight`),
      copied(ctx, `${p}.self_attn.k_norm.weight`),
      copied(ctx, `${p}.self_attn.k_proj.weight`),
      copied(ctx, `${p}.self_attn.q_norm.weight`),
      copied(ctx, `${p}.self_attn.q_proj.weight`),
      copied(ctx, `${p}.self_attn.v_proj.weight`),
      copied(ctx, `${p}.self_attn.o_proj.weight`),
    ];
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}`;
      out.push(copied(ctx, `${p}.input_layernorm.weight`));
      // v0.1.4 order: the experts sit inside each layer, in the Qwen3 list's place for the MLP.
      if (!fused) for (const proj of QWEN3_MLP) for (const ex of ctx.experts) out.push(expertTensor(ctx, ex, l, proj, `${p}.mlp.experts.${ex.index}.${proj}.weight`));
      out.push(...attn(p));
    }
    out.push(copied(ctx, 'model.norm.weight'), ...copiedIfPresent(ctx, 'lm_head.weight'));
    // HEAD order for the fused layout: all stacked experts after the non-MLP tensors.
    if (fused) for (let l = 0; l < L; l++) out.push(...fusedExperts(ctx, l, `model.layers.${l}.mlp.experts`));
    for (let l = 0; l < L; l++) out.push(router(ctx, l, `model.layers.${l}.mlp.gate.weight`));
    return out;
  },
};
