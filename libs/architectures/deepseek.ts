import { GATE_MODES } from '../gates';
import { dtypeToTorchName } from '../safetensors';
import { ATTN_PROJS, CONFIG_FLOATS, copied, copiedIfPresent, expertTensor, hasPrompts, modelTypeProblem, router, type MlpProj } from './common';
import type { PlanTensor } from '../plan';
import type { OutputArchitecture } from './types';

const DEEPSEEK_REPO = 'deepseek-ai/deepseek-moe-16b-base';

/** The Llama/Mistral weight list's MLP order. */
const LLAMA_MLP: readonly MlpProj[] = ['up_proj', 'gate_proj', 'down_proj'];


/**
 * DeepSeek MoE: per-expert `mlp.experts.E.*` plus an optional ungated `mlp.shared_experts.*`.
 * Always the classic layout: DeepSeek's remote modeling code reads nothing else.
 */
export const deepseek: OutputArchitecture = {
  name: 'DeepSeek MoE',
  fusedLayout: false,
  llamaCppReadsFused: false,
  // Its write order: the base's weight list (up, gate, down), routed experts then the shared one.
  noiseDrawOrder: { perExpert: false, projs: LLAMA_MLP },
  rejects(ctx) {
    if (ctx.shared.length > 1) return `DeepSeek MoE supports at most one shared expert (got ${ctx.shared.length})`;
    const s = ctx.shared[0];
    if (s && (hasPrompts(s.spec.positive_prompts) || hasPrompts(s.spec.negative_prompts))) {
      return 'DeepSeek MoE does not support gating shared experts: its shared expert must have no positive or negative prompts';
    }
    return modelTypeProblem(ctx, ['llama', 'mistral']);
  },
  // The shared expert is never gated, but in the random modes the reference still draws its row (before any expert's noise),
  // which the degenerate-gate check then sees; non-random modes have no prompts to build one from.
  gatedSharedExperts: (ctx) => (GATE_MODES[ctx.gateMode].random ? ctx.shared.length : 0),
  // DeepseekConfig of deepseek-ai/deepseek-moe-16b-base (its remote code): aux_loss_alpha is a float too.
  floatKeys: [...CONFIG_FLOATS, 'aux_loss_alpha'],
  config(ctx) {
    // json.dump of the base config's dict: keys keep their place, new ones are appended in this order.
    const out: Record<string, unknown> = structuredClone(ctx.base.config.raw);
    out.architectures = ['DeepseekForCausalLM'];
    out.model_type = 'deepseek';
    out.n_routed_experts = ctx.experts.length;
    out.n_shared_experts = ctx.shared.length > 0 ? ctx.shared.length : null;
    out.num_experts_per_tok = ctx.recipe.experts_per_token;
    out.first_k_dense_replace = 0;
    out.moe_layer_freq = 1;
    out.scoring_func = 'softmax';
    out.norm_topk_prob = true;
    out.moe_intermediate_size = ctx.base.config.intermediateSize;
    out.auto_map = {
      AutoConfig: `${DEEPSEEK_REPO}--configuration_deepseek.DeepseekConfig`,
      AutoModel: `${DEEPSEEK_REPO}--modeling_deepseek.DeepseekModel`,
      AutoModelForCausalLM: `${DEEPSEEK_REPO}--modeling_deepseek.DeepseekForCausalLM`,
    };
    if (ctx.outDtype !== null) {
      out.torch_dtype = dtypeToTorchName(ctx.outDtype);
      // Our addition: a transformers-5 base's `dtype` key would otherwise contradict torch_dtype.
      if ('dtype' in out) out.dtype = out.torch_dtype;
    }
    return out;
  },
  tensors(ctx) {
    const L = ctx.base.config.numLayers;
    const out: PlanTensor[] = [copied(ctx, 'model.embed_tokens.weight')];
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}`;
      out.push(copied(ctx, `${p}.input_layernorm.weight`));
      for (const a of ATTN_PROJS) out.push(copied(ctx, `${p}.self_attn.${a}.weight`));
      out.push(copied(ctx, `${p}.post_attention_layernorm.weight`));
      for (const proj of LLAMA_MLP) {
        for (const ex of ctx.experts) out.push(expertTensor(ctx, ex, l, proj, `${p}.mlp.experts.${ex.index}.${proj}.weight`));
        for (const ex of ctx.shared) out.push(expertTensor(ctx, ex, l, proj, `${p}.mlp.shared_experts.${proj}.weight`));
      }
    }
    out.push(copied(ctx, 'model.norm.weight'), ...copiedIfPresent(ctx, 'lm_head.weight'));
    for (let l = 0; l < L; l++) out.push(router(ctx, l, `model.layers.${l}.mlp.gate.weight`));
    return out;
  },
};
