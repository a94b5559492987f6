import { spawnSync } from 'node:child_process';
/**
 * `npm run bench -- routing`: how well each gate mode's routers send held-out text to its intended expert, measured
 * on the merged model itself. Three generated recipe sets (tiny Llama and Mistral families, 3 to 8 experts, top-2):
 * each expert is the base with its MLPs perturbed differently, each expert's prompts come from a vocabulary of its
 * own (pseudo-words over a domain's letters, partly shared with the next domain), and held-out texts are other
 * sentences over the same vocabularies. Every mode merges the same recipe; transformers runs each merged model on
 * the held-out texts with output_router_logits=True (bench/routing_eval.py), over every token and every layer.
 * Also the cost of the fit itself at the incremental bench's medium shape (hidden 2048, 22 layers, 1,155 tokens).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { copyFile } from 'node:fs/promises';
import { mergeRecipe } from '../libs/pipeline';
import { GATE_MODE_NAMES, GATE_MODES, type GateMode } from '../libs/gates';
import { fitLayer, FIT_DEFAULTS, Rng, targetsAndWeights, type FitSample } from '../libs/gates';
import { SafetensorsWeights, decodeFloats, encodeFloats, readTensorBytes, writeShard } from '../libs/safetensors';
import { loadTokenizer } from '../libs/tokenizer';
import { configJson, writeTinyModel, type TinyModelSpec } from '../tools/testing/tiny-models';
import { writeByteTokenizer, writeFastModel } from './models';
import { computeRouterInputs } from '../libs/forward';

// A Python with torch and transformers (the reference's runtime) measures the written models.
export const PYTHON = process.env.MOE_FORGE_PYTHON ?? 'python3';

export interface RoutingSet {
  name: string;
  spec: TinyModelSpec;
  experts: number;
  topK: number;
  /** Relative size of each expert's MLP perturbation. */
  perturb: number;
  prompts: number;
  heldOut: number;
  seed: number;
}

export const ROUTING_SETS: RoutingSet[] = [
  { name: 'llama-4x', spec: { modelType: 'llama', hidden: 128, layers: 4, heads: 4, kvHeads: 2, intermediate: 256, vocab: 512, seed: 5 }, experts: 4, topK: 2, perturb: 0.6, prompts: 8, heldOut: 8, seed: 1 },
  { name: 'mistral-3x', spec: { modelType: 'mistral', hidden: 96, layers: 3, heads: 4, kvHeads: 2, intermediate: 192, vocab: 512, slidingWindow: 64, seed: 7 }, experts: 3, topK: 2, perturb: 0.6, prompts: 8, heldOut: 8, seed: 2 },
  { name: 'llama-8x', spec: { modelType: 'llama', hidden: 128, layers: 4, heads: 4, kvHeads: 4, intermediate: 256, vocab: 512, seed: 9 }, experts: 8, topK: 2, perturb: 0.6, prompts: 6, heldOut: 6, seed: 3 },
];

/** Figures of one merged model over every held-out token and layer (bench/routing_eval.py). */
export interface RoutingFigures {
  top1: number;
  topk: number;
  /** Per layer max load / mean load − 1 (load: share of top-k assignments): the worst layer, and the mean. */
  maxVioWorst: number;
  maxVioMean: number;
  perTextTop1: number;
  tokens: number;
}

/**
 * Each domain's vocabulary: 40 words of 1 to 3 syllables over 6 consonants and 3 vowels of its own slice of the
 * alphabet (half of them shared with the next domain's). Sentences of 6 to 11 words, about a third of them function
 * words every domain shares.
 */
export function domainTexts(set: RoutingSet): { train: string[][]; heldOut: string[][] } {
  const rng = new Rng(set.seed, `routing/${set.name}`);
  const pick = <T>(xs: T[]) => xs[Math.floor(rng.uniform() * xs.length)]!;
  const consonants = [...'bcdfghjklmnpqrstvwxz'];
  const vowels = [...'aeiouy'];
  const vocab = Array.from({ length: set.experts }, (_, d) => {
    const cs = Array.from({ length: 6 }, (_, i) => consonants[(d * 3 + i) % consonants.length]!);
    const vs = [0, 1, 2].map((i) => vowels[(d + i) % vowels.length]!);
    const words = new Set<string>();
    while (words.size < 40) {
      const n = 1 + Math.floor(rng.uniform() * 3);
      words.add(Array.from({ length: n }, () => pick(cs) + pick(vs)).join('') + (rng.uniform() < 0.3 ? pick(cs) : ''));
    }
    return [...words];
  });
  // Function words every domain shares, as real text does: about a third of the words.
  const shared = ['the', 'of', 'and', 'to', 'in', 'is', 'it', 'on', 'for', 'with'];
  const sentence = (d: number) => Array.from({ length: 6 + Math.floor(rng.uniform() * 6) }, () => (rng.uniform() < 0.35 ? pick(shared) : pick(vocab[d]!))).join(' ');
  const train = vocab.map((_, d) => Array.from({ length: set.prompts }, () => sentence(d)));
  const heldOut = vocab.map((_, d) => Array.from({ length: set.heldOut }, () => sentence(d)));
  return { train, heldOut };
}

/** The base (random tiny model, byte tokenizer) and experts: the base with every MLP matrix perturbed by its own noise. */
export async function writeSetModels(dir: string, set: RoutingSet): Promise<{ base: string; experts: string[] }> {
  const base = join(dir, 'base');
  await writeTinyModel(base, set.spec);
  await writeByteTokenizer(base);
  const w = await SafetensorsWeights.openFolder(base);
  const experts: string[] = [];
  for (let e = 0; e < set.experts; e++) {
    const out = join(dir, `expert-${e}`);
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'config.json'), JSON.stringify(configJson(set.spec), null, 2));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) await copyFile(join(base, f), join(out, f));
    const rng = new Rng(1000 + e, `routing/${set.name}/expert`);
    const names = w.names();
    const specs = names.map((n) => ({ name: n, dtype: 'F32', shape: w.get(n).shape }));
    await writeShard(join(out, 'model.safetensors'), specs, async function* (t) {
      const v = decodeFloats(await readTensorBytes(w.get(t.name)), 'F32');
      if (/\.mlp\./.test(t.name)) {
        let ss = 0;
        for (const x of v) ss += x * x;
        const rms = Math.sqrt(ss / v.length);
        for (let i = 0; i < v.length; i++) v[i] = v[i]! + set.perturb * rms * rng.normal();
      }
      yield encodeFloats(v, 'F32');
    });
    experts.push(out);
  }
  return { base, experts };
}

function recipeText(mode: GateMode, models: { base: string; experts: string[] }, train: string[][], topK: number, extra = ''): string {
  const q = (s: string) => JSON.stringify(s);
  return `base_model: ${models.base}
gate_mode: ${mode}
experts_per_token: ${topK}
${extra}experts:
${models.experts.map((m, e) => `  - source_model: ${m}\n    positive_prompts: [${train[e]!.map(q).join(', ')}]`).join('\n')}
`;
}

/** Runs bench/routing_eval.py on merged models: the figures per model folder. */
export function evaluate(models: string[], texts: { ids: number[]; expert: number }[], topK: number, work: string): RoutingFigures[] {
  const req = join(work, `eval-${Date.now()}.json`);
  writeFileSync(req, JSON.stringify({ models, texts, topK }));
  const out = execFileSync(PYTHON, [join(__dirname, 'routing_eval.py'), req], { encoding: 'utf8', maxBuffer: 64 << 20, timeout: 30 * 60_000, stdio: ['ignore', 'pipe', 'ignore'] });
  return JSON.parse(out.trim().split('\n').pop()!) as RoutingFigures[];
}

/** The modes the set is merged with: every mode of the table (hidden_last is hidden's twin and left out). */
export function routingModes(): GateMode[] {
  const seen = new Set<string>();
  return GATE_MODE_NAMES.filter((m) => {
    const s = GATE_MODES[m];
    const key = JSON.stringify([s.states, s.reduction, s.random]);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

export interface SetResult {
  set: string;
  experts: number;
  topK: number;
  figures: Record<string, RoutingFigures>;
}

export async function benchRoutingSets(tmp: string, log: (s: string) => void, sets = ROUTING_SETS): Promise<SetResult[]> {
  if (spawnSync(PYTHON, ['-c', 'import torch, transformers'], { stdio: 'ignore' }).status !== 0) throw new Error(`the routing section runs transformers through ${PYTHON}, which cannot import torch and transformers (set MOE_FORGE_PYTHON)`);
  const results: SetResult[] = [];
  for (const set of sets) {
    const dir = join(tmp, `routing-${set.name}`);
    mkdirSync(dir, { recursive: true });
    const models = await writeSetModels(join(dir, 'models'), set);
    const { train, heldOut } = domainTexts(set);
    const tok = await loadTokenizer(models.base);
    const texts = heldOut.flatMap((ts, e) => ts.map((t) => ({ ids: tok.encodePrompt(t), expert: e })));
    // Every mode, and fit again on the base's own states (fit_states: base), the per-prompt states without experts.
    const variants: { name: string; mode: GateMode; extra: string }[] = [
      ...routingModes().map((mode) => ({ name: mode, mode, extra: '' })),
      ...routingModes().filter((m) => GATE_MODES[m].states === 'router_input').map((mode) => ({ name: `${mode} (fit_states: base)`, mode, extra: 'fit_states: base\n' })),
    ];
    const modes = variants.map((v) => v.name);
    const outs: string[] = [];
    for (const [i, { mode, extra }] of variants.entries()) {
      const f = join(dir, `v${i}.yml`);
      writeFileSync(f, recipeText(mode, models, train, set.topK, extra));
      const out = join(dir, `out-${i}`);
      await mergeRecipe({ recipeFile: f, outPath: out, modelBaseDir: dir, cacheDir: join(dir, 'cache'), seed: 0, log: () => undefined, warn: () => undefined });
      outs.push(out);
    }
    const figs = evaluate(outs, texts, set.topK, dir);
    const figures = Object.fromEntries(modes.map((m, i) => [m, figs[i]!]));
    for (const m of modes) log(`routing ${set.name} ${m}: top-1 ${figures[m]!.top1.toFixed(3)}, top-${set.topK} ${figures[m]!.topk.toFixed(3)}, MaxVio worst layer ${figures[m]!.maxVioWorst.toFixed(2)}`);
    results.push({ set: set.name, experts: set.experts, topK: set.topK, figures });
  }
  return results;
}

/**
 * The fit's own cost at a shape, per layer: synthetic router inputs (`tokens` tokens over `prompts` prompts and
 * `experts` experts, one layer fitted as build-gates fits each), against the forward pass that gives those states:
 * one decoder layer of that shape (bf16, generated) run over the same tokens with its router input.
 */
export async function fitCost(tmp: string, shape: { hidden: number; intermediate: number; heads: number; kvHeads: number; vocab: number; tokens: number; prompts: number; experts: number }): Promise<{ fitSeconds: number; forwardSeconds: number; form: string }> {
  const { hidden: H, tokens, prompts, experts: E } = shape;
  const rng = new Rng(1, 'routing/fit-cost');
  const per = Math.floor(tokens / prompts);
  const lens = Array.from({ length: prompts }, (_, i) => (i < tokens - per * prompts ? per + 1 : per));
  const tw = targetsAndWeights(lens.map((n, i) => ({ tokens: n, positive: [i % E], negative: [] })), E);
  const samples: FitSample[] = lens.map((n, i) => ({ tokens: Float32Array.from({ length: n * H }, () => rng.normal()), ...tw[i]! }));
  const t0 = performance.now();
  const form = fitLayer(samples, H, E, FIT_DEFAULTS).form;
  const fitSeconds = (performance.now() - t0) / 1000;
  const dir = join(tmp, 'fit-cost-model');
  await writeFastModel(dir, { modelType: 'llama', hidden: H, layers: 1, heads: shape.heads, kvHeads: shape.kvHeads, intermediate: shape.intermediate, vocab: shape.vocab });
  const ids = lens.map((n) => Array.from({ length: n }, (_, t) => (t === 0 ? 0 : 3 + Math.floor(rng.uniform() * 250))));
  const t1 = performance.now();
  await computeRouterInputs(dir, ids);
  return { fitSeconds, forwardSeconds: (performance.now() - t1) / 1000, form };
}
