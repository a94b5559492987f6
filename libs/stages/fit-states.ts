/**
 * gate_mode fit's prompt states: every token's router input at every layer of the base (the post-attention RMSNorm
 * output of its dense layer), content-addressed per prompt in the prompt-state cache, so an added prompt costs
 * its own forward pass; and the fit itself (build-gates), from those states.
 */
import type { ModelSource } from '../architectures';
import { ContentCache } from '../cache';
import { computeRouterInputsIsolated, prepareForwardWorker, type Device } from '../forward';
import { contentId } from '../resolve';
import { getRouterInputs, putRouterInputs, routerInputsListed } from '../prompt-cache';
import { fitLayer, FIT_DEFAULTS, newGates, targetsAndWeights, type FitOptions, type FitSample, type GateTensor } from '../gates';
import type { MergeContext } from './context';
import type { EmbedOptions } from './embed-prompts';
import { cachedPerPrompt } from './per-prompt-cache';

export interface RouterInputsResult {
  /** Per text: its token ids and, per layer, its T x H router inputs. */
  states: { ids: number[]; tokens: Float32Array[] }[];
  computed: number;
  fromCache: number;
  device: Device;
}

/**
 * Router inputs of texts through the base (with `mlpFrom`'s MLPs behind its attention when given), each read from
 * the cache or computed (all misses in one pass) and stored.
 */
export async function cachedRouterInputs(base: ModelSource, texts: string[], opts: EmbedOptions, mlpFrom?: ModelSource): Promise<RouterInputsResult> {
  const cache = new ContentCache(opts.cacheDir, opts.warn ?? opts.log, { recompute: opts.recompute });
  const mlp = mlpFrom ? await contentId(mlpFrom.dir, { cache }) : null;
  const r = await cachedPerPrompt(base, texts, opts, {
    label: 'router-input',
    note: mlpFrom ? ` (MLPs of ${mlpFrom.ref})` : '',
    material: { mlp },
    get: (c, m) => getRouterInputs(c, m),
    listed: (c, m) => routerInputsListed(c, m),
    put: (c, m, v) => putRouterInputs(c, m, v),
    prepare: (device) => prepareForwardWorker('router', base.dir, { device, mlpFrom: mlpFrom?.dir }),
    compute: (ids, device, onProgress) => computeRouterInputsIsolated(base.dir, ids, { device, mlpFrom: mlpFrom?.dir, onProgress }),
  });
  return { states: r.values.map((tokens, i) => ({ ids: r.ids[i]!, tokens })), computed: r.computed, fromCache: r.fromCache, device: r.device };
}

/** The recipe's fit options with their defaults. */
export function fitOptions(merge: MergeContext): FitOptions & { states: 'expert' | 'base' } {
  const r = merge.parsed.recipe;
  return { lambda: r.fit_lambda ?? FIT_DEFAULTS.lambda, confidence: r.fit_confidence ?? FIT_DEFAULTS.confidence, states: r.fit_states ?? 'expert' };
}

/**
 * What the fit is made on: a prompt's tokens through the base with the MLPs of an expert that lists it as positive
 * (`source`: that gated expert; one unit per such expert), labelled with that expert; or, for `fit_states: base`
 * and for prompts that are only negative, through the base itself (`source` null). Negatives push down the experts
 * that list them.
 */
export interface FitUnit {
  prompt: number;
  source: number | null;
  positive: number[];
  negative: number[];
}

export function fitUnits(merge: MergeContext, texts: string[]): FitUnit[] {
  const index = new Map(texts.map((t, i) => [t, i]));
  const pos = texts.map(() => [] as number[]);
  const neg = texts.map(() => [] as number[]);
  merge.gatedExperts.forEach((ex, e) => {
    for (const p of ex.spec.positive_prompts ?? []) if (!pos[index.get(p)!]!.includes(e)) pos[index.get(p)!]!.push(e);
    for (const p of ex.spec.negative_prompts ?? []) if (!neg[index.get(p)!]!.includes(e)) neg[index.get(p)!]!.push(e);
  });
  const perExpert = fitOptions(merge).states === 'expert';
  return texts.flatMap((_, i): FitUnit[] =>
    perExpert && pos[i]!.length > 0 ? pos[i]!.map((e) => ({ prompt: i, source: e, positive: [e], negative: neg[i]! })) : [{ prompt: i, source: null, positive: pos[i]!, negative: neg[i]! }],
  );
}

/** A unit's tensor in prompt-states.safetensors: `pN.eK.tokens` (expert K's MLPs) or `pN.base.tokens`. */
export const unitTensor = (u: FitUnit) => `p${u.prompt}.${u.source === null ? 'base' : `e${u.source}`}.tokens`;

/**
 * The fitted routers [L, gated experts, H] from each unit's router inputs (`tokensOf(unit)`: per layer, T x H).
 * A first token shared by every prompt (the BOS) carries no label and is left out of the fit.
 */
export async function fitGates(merge: MergeContext, texts: { text: string; ids: number[] }[], tokensOf: (u: FitUnit) => Promise<Float32Array[]>): Promise<{ gates: GateTensor; trainTop1: number[] }> {
  const L = merge.ctx.base.config.numLayers;
  const H = merge.ctx.base.config.hiddenSize;
  const N = merge.gatedExperts.length;
  const opts = fitOptions(merge);
  const units = fitUnits(merge, texts.map((t) => t.text));
  const first = texts[0]?.ids[0];
  const skip = texts.length > 1 && texts.every((t) => t.ids[0] === first && t.ids.length > 1) ? 1 : 0;
  const tw = targetsAndWeights(units.map((u) => ({ tokens: texts[u.prompt]!.ids.length - skip, positive: u.positive, negative: u.negative })), N);
  const all: Float32Array[][] = [];
  for (const u of units) all.push(await tokensOf(u));
  const g = newGates(L, N, H);
  const trainTop1: number[] = [];
  for (let l = 0; l < L; l++) {
    const samples: FitSample[] = all.map((layers, i) => ({ tokens: layers[l]!.subarray(skip * H), ...tw[i]! })).filter((s) => s.weight > 0);
    const fit = fitLayer(samples, H, N, opts);
    g.data.set(fit.rows, l * N * H);
    trainTop1.push(fit.trainTop1);
  }
  return { gates: g, trainTop1 };
}
