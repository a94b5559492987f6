import { dtypeToTorchName, type WeightDtype } from '../safetensors';
import type { ModelConfig } from '../model-folder';
import { weightDtype } from '../model-folder';
import { ModelError } from '../errors';
import type { PlanPart, PlanTensor, SourcePart } from '../plan';
import type { ArchContext, ExpertSource, ModelSource } from './types';
import type { JsonPath } from '../json';

export const MLP_PROJS = ['gate_proj', 'up_proj', 'down_proj'] as const;
export type MlpProj = (typeof MLP_PROJS)[number];

export function sourcePart(model: ModelSource, tensor: string): SourcePart {
  if (!model.weights.has(tensor)) {
    const loc = (() => {
      try {
        return model.weights.get(tensor);
      } catch (e) {
        return e as Error;
      }
    })();
    throw loc instanceof Error ? loc : new ModelError('missing_tensor', `tensor missing from model ${model.ref}`, { file: model.dir, tensor });
  }
  const loc = model.weights.get(tensor);
  // checkModelTensors refused other dtypes already; this narrows the header's name to the type.
  return { kind: 'source', model: model.key, tensor, file: loc.file, offset: loc.offset, byteLength: loc.byteLength, dtype: weightDtype(model.ref, tensor, loc), shape: loc.shape };
}

export function outDtypeFor(ctx: ArchContext, srcDtype: WeightDtype): WeightDtype {
  return ctx.outDtype ?? srcDtype;
}

/** A base tensor copied unchanged except for the dtype cast. */
export function copied(ctx: ArchContext, name: string, outName = name): PlanTensor {
  const p = sourcePart(ctx.base, name);
  return { name: outName, dtype: outDtypeFor(ctx, p.dtype), shape: p.shape, parts: [p], group: 'base' };
}

/** Optional base tensor (lm_head with tied embeddings): skipped when absent, as the reference does. */
export function copiedIfPresent(ctx: ArchContext, name: string): PlanTensor[] {
  return ctx.base.weights.has(name) ? [copied(ctx, name)] : [];
}

/** One expert's MLP tensor with noise (every projection) and residual_scale (down_proj only). */
export function expertPart(ctx: ArchContext, ex: ExpertSource, layer: number, proj: MlpProj): SourcePart {
  const p = sourcePart(ex.model, `model.layers.${layer}.mlp.${proj}.weight`);
  if (ex.spec.noise_scale !== null && ex.spec.noise_scale !== undefined) {
    p.noise = { scale: ex.spec.noise_scale, seed: ctx.seed, stream: `noise/${ex.shared ? 'shared' : 'expert'}/${ex.index}/${layer}/${proj}` };
  }
  if (proj === 'down_proj' && ex.spec.residual_scale !== null && ex.spec.residual_scale !== undefined) p.scale = ex.spec.residual_scale;
  return p;
}

export function expertTensor(ctx: ArchContext, ex: ExpertSource, layer: number, proj: MlpProj, outName: string): PlanTensor {
  const p = expertPart(ctx, ex, layer, proj);
  return { name: outName, dtype: outDtypeFor(ctx, p.dtype), shape: p.shape, parts: [p], group: expertGroup(ex) };
}

export function expertGroup(ex: ExpertSource): string {
  return `${ex.shared ? 'shared' : 'expert'}/${ex.index}`;
}

/** Fused layout (transformers 5): gate_up_proj [E, 2I, H] and down_proj [E, H, I], stacked over experts. */
export function fusedExperts(ctx: ArchContext, layer: number, prefix: string): PlanTensor[] {
  const gu: PlanPart[] = [];
  const down: PlanPart[] = [];
  for (const ex of ctx.experts) {
    gu.push(expertPart(ctx, ex, layer, 'gate_proj'), expertPart(ctx, ex, layer, 'up_proj'));
    down.push(expertPart(ctx, ex, layer, 'down_proj'));
  }
  const first = gu[0] as SourcePart;
  const d0 = down[0] as SourcePart;
  const E = ctx.experts.length;
  const [I, H] = first.shape as [number, number];
  return [
    { name: `${prefix}.gate_up_proj`, dtype: outDtypeFor(ctx, first.dtype), shape: [E, 2 * I, H], parts: gu, group: 'experts' },
    { name: `${prefix}.down_proj`, dtype: outDtypeFor(ctx, d0.dtype), shape: [E, H, I], parts: down, group: 'experts' },
  ];
}

/** Router of one layer: rows 0..E-1 of G[layer]. */
export function router(ctx: ArchContext, layer: number, name: string, rows?: number[]): PlanTensor {
  const E = ctx.experts.length;
  const r = rows ?? Array.from({ length: E }, (_, i) => i);
  return { name, dtype: ctx.outDtype ?? 'F32', shape: [r.length, ctx.base.config.hiddenSize], parts: [{ kind: 'gates', layer, rows: r }], group: 'router' };
}

export const ATTN_PROJS = ['q_proj', 'k_proj', 'v_proj', 'o_proj'] as const;

/** Same model_type for every input, and one of `allowed`; otherwise why not (naming the models). */
export function modelTypeProblem(ctx: ArchContext, allowed: readonly string[]): string | null {
  const all = [ctx.base, ...ctx.experts.map((e) => e.model), ...ctx.shared.map((e) => e.model)];
  const types = new Map<string, string[]>();
  for (const m of all) types.set(m.config.modelType, [...(types.get(m.config.modelType) ?? []), m.ref]);
  if (types.size > 1) {
    return `models have different model_type: ${[...types].map(([t, refs]) => `${t} (${[...new Set(refs)].join(', ')})`).join(' vs ')}`;
  }
  const t = ctx.base.config.modelType;
  return allowed.includes(t) ? null : `model_type ${t} is not accepted (needs ${allowed.join(' or ')})`;
}

export function configDtype(ctx: ArchContext, out: Record<string, unknown>): void {
  const name = ctx.outDtype === null ? null : dtypeToTorchName(ctx.outDtype);
  const key = 'dtype' in ctx.base.config.raw && !('torch_dtype' in ctx.base.config.raw) ? 'dtype' : 'torch_dtype';
  out[key] = name;
}

export function sortedKeys(o: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]]));
}

/** A tensor of zeros (Qwen2-MoE's attention biases for bases that have none). */
export function zerosTensor(name: string, dtype: WeightDtype, elements: number): PlanTensor {
  return { name, dtype, shape: [elements], parts: [{ kind: 'zeros', elements }], group: 'base' };
}

/** Sets the keys of `defaults` that `out` lacks, as a config class fills its constructor defaults. */
export function fillDefaults(out: Record<string, unknown>, defaults: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(defaults)) if (!(k in out)) out[k] = v;
}

/** The base config.json as save_pretrained would pass it through (its own version key and a null pad id dropped). */
export function baseConfigCopy(ctx: ArchContext): Record<string, unknown> {
  const out: Record<string, unknown> = structuredClone(ctx.base.config.raw);
  delete out.transformers_version;
  if (out.pad_token_id === null) delete out.pad_token_id;
  return out;
}

/**
 * Float-typed keys of transformers 5.17's MixtralConfig, Qwen2MoeConfig and Qwen3MoeConfig (attention_dropout is
 * `float | int` there; transformers writes its 0.0), plus rope_theta, a float in transformers 4's classes and in
 * RopeParameters. transformers 5 refuses an int for a float field.
 */
export const CONFIG_FLOATS = ['attention_dropout', 'initializer_range', 'rms_norm_eps', 'rope_theta', 'router_aux_loss_coef'] as const;

/** RopeParameters' float fields, inside rope_parameters or rope_scaling (short/long_factor are lists of floats). */
const ROPE_FLOATS = new Set(['rope_theta', 'partial_rotary_factor', 'factor', 'attention_factor', 'beta_fast', 'beta_slow', 'low_freq_factor', 'high_freq_factor', 'short_factor', 'long_factor']);

/** Whether the number at `path` of an output config.json is a float for its consumer. */
export function configFloatTest(floatKeys: readonly string[]): (path: JsonPath) => boolean {
  const top = new Set(floatKeys);
  return (path) => {
    if (path.length === 1) return top.has(String(path[0]));
    const [outer, inner] = path;
    return (outer === 'rope_parameters' || outer === 'rope_scaling') && ROPE_FLOATS.has(String(inner));
  };
}

/** Python truthiness of a prompt list (the reference tests `if expert.positive_prompts`). */
export function hasPrompts(list: string[] | null | undefined): boolean {
  return Array.isArray(list) && list.length > 0;
}

/** Constructor defaults shared by Qwen2MoeConfig and Qwen3MoeConfig (transformers 4.57), which save_pretrained writes. */
export function qwenMoeDefaults(c: ModelConfig): Record<string, unknown> {
  return {
    hidden_act: 'silu',
    max_position_embeddings: 32768,
    initializer_range: 0.02,
    rms_norm_eps: 1e-6,
    use_cache: true,
    tie_word_embeddings: false,
    num_key_value_heads: c.numKvHeads,
    // From the parsed config, so a transformers-5 base's rope_parameters are not lost to the class defaults.
    rope_theta: c.ropeTheta,
    rope_scaling: c.ropeScaling,
    max_window_layers: 28,
    attention_dropout: 0.0,
    output_router_logits: false,
    router_aux_loss_coef: 0.001,
    mlp_only_layers: [],
  };
}
