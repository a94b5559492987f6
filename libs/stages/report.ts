import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { ROUTING_SCHEMA, readStageJson } from '../stage-files';
import { ForgeError } from '../errors';
import { EVAL_PROMPTS, readInputText } from '../input';
import { buildReport, parseEvalPrompts, renderHtml, type EvalPrompt, type ReportExpert, type ReportPrompt, type RoutingReport } from '../report';
import type { MergeContext } from './context';
import { cachedHiddenStates, embeddingSums, expectedPromptStates, readPromptStates } from './embed-prompts';
import { resolveDevice } from '../forward';
import { gatesForAssembly, readGates } from './build-gates';
import { checkPlanGates, readPlan } from './assemble';
import { runIsolatedWorker, type RouterLogits } from '../forward';
import type { RoutingRequest } from './routing-worker';
import { loadTokenizer } from '../tokenizer';
import { measureRouting } from '../report';
import { GATE_MODES } from '../gates';
import { promptState, type GateTensor } from '../gates';
import { writeWhole, type Progress } from '../util';
import { cachedRouterInputs } from './fit-states';

export interface ReportOptions {
  /** Shown in the report's title (the Nx project, or the recipe's file name). */
  name: string;
  /** Prompt-state cache, for held-out prompts and for random gates (built without prompt states). */
  cacheDir: string;
  device?: string;
  /** Held-out prompts file (.yml/.yaml/.jsonl), already resolved. */
  evalPrompts?: string;
  log?: (line: string) => void;
  warn?: (line: string) => void;
  /** Counts of this run's work (default: the log); Nx replays a cached log, so executors send them to debug. */
  stats?: (line: string) => void;
  progress?: Progress;
  /** Read nothing from the prompt-state cache. */
  recompute?: boolean;
}

export interface ReportStats {
  /** Prompt states the report itself needed (held-out prompts; every prompt for random gates). */
  computed: number;
  fromCache: number;
  /** Texts and tokens run through the merged model. */
  mergedTexts: number;
  mergedTokens: number;
}

export const REPORT_FILES = ['routing.json', 'routing.html'] as const;

// Set by scripts/build.mjs: the built routing worker, relative to the bundle that forks it; unset when run from sources.
declare const __ROUTING_WORKER__: string | undefined;
const ROUTING_WORKER = join(__dirname, typeof __ROUTING_WORKER__ === 'string' ? __ROUTING_WORKER__ : 'routing-worker.ts');

export async function readEvalPrompts(file: string, experts: number): Promise<EvalPrompt[]> {
  return parseEvalPrompts(await readInputText(file, EVAL_PROMPTS), file, experts);
}

/**
 * Stage report: what the merged model routes (every token of every text through its own layers, from
 * assemble-experts' plan.json and gates: `planDir`), and, as a check of how the gates were built, what the
 * routers do with each prompt's state the gates were built from (read from embed-prompts; held-out prompts
 * through the same cached forward pass). Writes routing.json and routing.html into outDir, each whole or not at all.
 */
export async function runReport(merge: MergeContext, statesDir: string, gatesDir: string, planDir: string, outDir: string, opts: ReportOptions): Promise<{ report: RoutingReport; html: string; stats: ReportStats }> {
  const { ctx } = merge;
  const mode = GATE_MODES[ctx.gateMode];
  const embeddings = mode.states === 'cheap_embed';
  // Random gates have no states of their own: prompts meet them as last-token hidden states.
  const reduction = mode.reduction ?? 'last';
  const { gates, warnings } = await gatesForAssembly(merge, gatesDir);
  const R = ctx.experts.length;
  const experts: ReportExpert[] = merge.gatedExperts.map((e, i) => ({ index: i, label: e.shared ? `shared ${e.index}` : `expert ${e.index}`, model: e.model.ref, shared: e.shared }));
  const prompts: ReportPrompt[] = [];
  merge.gatedExperts.forEach((e, i) => {
    for (const text of e.spec.positive_prompts ?? []) prompts.push({ text, set: 'train', role: 'positive', expert: i });
    for (const text of e.spec.negative_prompts ?? []) prompts.push({ text, set: 'train', role: 'negative', expert: i });
  });
  if (opts.evalPrompts) for (const p of await readEvalPrompts(opts.evalPrompts, R)) prompts.push({ text: p.prompt, set: 'heldout', role: 'positive', expert: p.expert });

  const L = ctx.base.config.numLayers;
  const H = ctx.base.config.hiddenSize;
  const states = new Map<string, Float32Array[]>();
  const split = (x: Float32Array, n: number) => Array.from({ length: n }, (_, l) => x.subarray(l * H, (l + 1) * H));
  if (!mode.random) {
    // The states build-gates read, as it read them.
    const stored = await readPromptStates(statesDir, expectedPromptStates(merge));
    for (const [i, p] of stored.index.prompts.entries()) {
      if (embeddings) states.set(p.text, [await stored.tensor(`p${i}.sum`)]);
      else states.set(p.text, promptState({ last: split(await stored.tensor(`p${i}.last`), L), sum: split(await stored.tensor(`p${i}.sum`), L), count: p.count }, reduction));
    }
  }
  const missing = [...new Set(prompts.map((p) => p.text))].filter((t) => !states.has(t));
  const stats: ReportStats = { computed: 0, fromCache: 0, mergedTexts: 0, mergedTokens: 0 };
  if (missing.length > 0) {
    if (embeddings) {
      for (const [i, s] of (await embeddingSums(ctx.base, missing)).entries()) states.set(missing[i]!, [s.sum]);
      stats.computed = missing.length;
    } else {
      const limit = ctx.base.config.raw.max_position_embeddings;
      const checkIds = (ids: number[][]) => {
        const i = typeof limit === 'number' ? ids.findIndex((t) => t.length > limit) : -1;
        if (i >= 0) throw new ForgeError('prompt_too_long', `prompt ${JSON.stringify(missing[i]!.slice(0, 60))} is ${ids[i]!.length} tokens long, more than the ${limit} of the base model ${ctx.base.ref} (max_position_embeddings): shorten it`, { file: prompts.some((p) => p.set === 'train' && p.text === missing[i]) ? merge.parsed.file : opts.evalPrompts });
      };
      const embedOpts = { cacheDir: opts.cacheDir, device: opts.device, log: opts.log, warn: opts.warn, progress: opts.progress, checkIds, recompute: opts.recompute };
      // fit's routers read router inputs: held-out prompts meet them as their last token's.
      const r = mode.states === 'router_input' ? await cachedRouterInputs(ctx.base, missing, embedOpts) : await cachedHiddenStates(ctx.base, missing, embedOpts);
      r.states.forEach((s, i) => states.set(missing[i]!, 'tokens' in s ? s.tokens.map((x) => x.slice(x.length - H)) : promptState(s, reduction)));
      stats.computed = r.computed;
      stats.fromCache = r.fromCache;
    }
  }
  const measured = await measureMerged(merge, planDir, prompts, opts, stats);
  const report = buildReport({ name: opts.name, gateMode: ctx.gateMode, topK: ctx.recipe.experts_per_token, state: mode.routedState, gates, experts, prompts, states, randomGates: mode.random !== null, warnings, measured });
  const html = renderHtml(report);
  await mkdir(outDir, { recursive: true });
  await writeWhole(join(outDir, 'routing.json'), JSON.stringify(report) + '\n');
  await writeWhole(join(outDir, 'routing.html'), html);
  await writeFile(join(outDir, 'stats.json'), JSON.stringify(stats, null, 2) + '\n');
  (opts.stats ?? opts.log)?.(`report prompt states: ${stats.computed} computed, ${stats.fromCache} from cache; merged model: ${stats.mergedTexts} texts, ${stats.mergedTokens} tokens`);
  return { report, html, stats };
}

/**
 * Texts through the merged model that plan.json and the gates in `planDir` describe (no model folder needed:
 * the writer's own producer gives each tensor's bytes): per text, its token ids and per layer its [T, E] router logits.
 */
export async function mergedRouterLogits(merge: MergeContext, planDir: string, texts: string[], opts: Pick<ReportOptions, 'device' | 'progress' | 'evalPrompts'> = {}): Promise<{ ids: number[][]; logits: Float32Array[][]; gates: GateTensor; layers: number }> {
  const { ctx } = merge;
  // The base comes first: readPlan checks the plan's base against it.
  const models = [...new Map([ctx.base, ...ctx.experts.map((e) => e.model), ...ctx.shared.map((e) => e.model)].map((m) => [m.key, m])).values()];
  const plan = await readPlan(planDir, models);
  const gates = await readGates(planDir);
  checkPlanGates(plan, gates, join(planDir, 'plan.json'));
  // The written model carries the base's tokenizer: the same ids the model will see.
  const tok = await loadTokenizer(ctx.base.dir);
  const ids = texts.map((t) => tok.encodePrompt(t));
  const limit = plan.config.max_position_embeddings;
  const long = typeof limit === 'number' ? ids.findIndex((t) => t.length > limit) : -1;
  if (long >= 0) throw new ForgeError('prompt_too_long', `prompt ${JSON.stringify(texts[long]!.slice(0, 60))} is ${ids[long]!.length} tokens long, more than the merged model's ${limit} (max_position_embeddings): shorten it`, { file: opts.evalPrompts ?? merge.parsed.file });
  const device = resolveDevice(opts.device);
  const request: RoutingRequest = { plan, gates, prompts: ids, options: { device } };
  const logits = await runIsolatedWorker<RouterLogits>(ROUTING_WORKER, { ...request }, (p) => opts.progress?.update(p.layer * p.prompts + p.promptsDone, p.layers * p.prompts, `merged model, layer ${p.layer + 1}/${p.layers}`));
  return { ids, logits, gates, layers: plan.config.num_hidden_layers as number };
}

/** Every distinct text through the merged model, and the figures of what it routes. */
async function measureMerged(merge: MergeContext, planDir: string, prompts: ReportPrompt[], opts: ReportOptions, stats: ReportStats) {
  const texts = [...new Set(prompts.map((p) => p.text))];
  // A recipe prompt too long is the recipe's to shorten; any other is the held-out file's.
  const train = new Set(prompts.filter((p) => p.set === 'train').map((p) => p.text));
  const run = async (ts: string[], file?: string) => mergedRouterLogits(merge, planDir, ts, { device: opts.device, progress: opts.progress, evalPrompts: file });
  const { ids, logits, gates, layers } = await run(texts, texts.every((t) => train.has(t)) ? undefined : opts.evalPrompts);
  stats.mergedTexts = texts.length;
  stats.mergedTokens = ids.reduce((a, x) => a + x.length, 0);
  return measureRouting({
    prompts,
    routed: merge.ctx.experts.length,
    topK: merge.ctx.recipe.experts_per_token,
    gates,
    logits: new Map(texts.map((t, i) => [t, logits[i]!])),
    layers,
  });
}

/** The report stage's output, or null when it was not run (its summary and page then stay out of the card). */
export async function readReport(dir: string): Promise<{ report: RoutingReport; html: string } | null> {
  const file = join(dir, 'routing.json');
  if (!existsSync(file)) return null;
  const report = await readStageJson<RoutingReport>(file, ROUTING_SCHEMA, 2, 'report');
  const html = await readFile(join(dir, 'routing.html'), 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  return html === null ? null : { report, html };
}
