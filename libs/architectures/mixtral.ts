import { ATTN_PROJS, CONFIG_FLOATS, configDtype, copied, copiedIfPresent, expertTensor, fusedExperts, modelTypeProblem, router, sortedKeys } from './common';
import type { PlanTensor } from '../plan';
import type { OutputArchitecture } from './types';

/** Mixtral: classic `block_sparse_moe.experts.E.w1/w2/w3` by default, fused on request. */
export const mixtral: OutputArchitecture = {
  name: 'Mixtral',
  fusedLayout: true,
  llamaCppReadsFused: false,
  noiseDrawOrder: { perExpert: true, projs: ['gate_proj', 'down_proj', 'up_proj'] },
  rejects(ctx) {
    if (ctx.shared.length > 0) return 'Mixtral has no shared experts';
    return modelTypeProblem(ctx, ['llama', 'mistral']);
  },
  gatedSharedExperts: () => 0,
  floatKeys: [...CONFIG_FLOATS, 'router_jitter_noise'],
  config(ctx) {
    const out: Record<string, unknown> = { ...ctx.base.config.raw };
    delete out.transformers_version;
    if (out.pad_token_id === null) delete out.pad_token_id;
    // MistralConfig conversion, then MixtralConfig: these defaults appear when the base lacks them.
    const defaults: Record<string, unknown> = { rope_scaling: null, output_router_logits: false, router_aux_loss_coef: 0.001, router_jitter_noise: 0.0 };
    for (const [k, v] of Object.entries(defaults)) if (!(k in out)) out[k] = v;
    out.architectures = ['MixtralForCausalLM'];
    out.model_type = 'mixtral';
    out.num_local_experts = ctx.experts.length;
    out.num_experts_per_tok = ctx.recipe.experts_per_token;
    out.sliding_window = null;
    configDtype(ctx, out);
    return sortedKeys(out);
  },
  tensors(ctx) {
    const L = ctx.base.config.numLayers;
    const out: PlanTensor[] = [copied(ctx, 'model.embed_tokens.weight')];
    const nonMlp = (l: number) => [
      copied(ctx, `model.layers.${l}.input_layernorm.weight`),
      ...ATTN_PROJS.map((p) => copied(ctx, `model.layers.${l}.self_attn.${p}.weight`)),
      copied(ctx, `model.layers.${l}.post_attention_layernorm.weight`),
    ];
    const tail = () => [copied(ctx, 'model.norm.weight'), ...copiedIfPresent(ctx, 'lm_head.weight')];
    if (ctx.layout === 'fused') {
      for (let l = 0; l < L; l++) out.push(...nonMlp(l));
      out.push(...tail());
      for (let l = 0; l < L; l++) out.push(...fusedExperts(ctx, l, `model.layers.${l}.mlp.experts`));
      for (let l = 0; l < L; l++) out.push(router(ctx, l, `model.layers.${l}.mlp.gate.weight`));
      return out;
    }
    // v0.1.4 order: per layer the non-MLP tensors, then w3, w1, w2 for all experts.
    const classic = [['up_proj', 'w3'], ['gate_proj', 'w1'], ['down_proj', 'w2']] as const;
    for (let l = 0; l < L; l++) {
      out.push(...nonMlp(l));
      for (const [proj, w] of classic) {
        for (const ex of ctx.experts) out.push(expertTensor(ctx, ex, l, proj, `model.layers.${l}.block_sparse_moe.experts.${ex.index}.${w}.weight`));
      }
    }
    out.push(...tail());
    for (let l = 0; l < L; l++) out.push(router(ctx, l, `model.layers.${l}.block_sparse_moe.gate.weight`));
    return out;
  },
};
