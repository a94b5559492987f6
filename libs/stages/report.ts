import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { ROUTING_SCHEMA, readStageJson } from './stage-files';
import { ForgeError } from '../errors';
import { EVAL_PROMPTS, readInputText } from '../input';
import { buildReport, parseEvalPrompts, renderHtml, type EvalPrompt, type ReportExpert, type ReportPrompt, type RoutingReport } from '../report';
import type { MergeContext } from './context';
import { cachedHiddenStates, embeddingSums, expectedPromptStates, readPromptStates } from './embed-prompts';
import { gatesForAssembly } from './build-gates';
import { GATE_MODES } from '../gates/modes';
import { promptState } from '../gates';
import type { Progress } from '../util/progress';
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
}

export const REPORT_FILES = ['routing.json', 'routing.html'] as const;

export async function readEvalPrompts(file: string, experts: number): Promise<EvalPrompt[]> {
  return parseEvalPrompts(await readInputText(file, EVAL_PROMPTS), file, experts);
}

/**
 * Stage report: what the routers do with each prompt, layer by layer, from the states the gates were built
 * from (read from embed-prompts), plus held-out prompts through the same cached forward pass. Writes
 * routing.json and routing.html into outDir, each whole or not at all.
 */
export async function runReport(merge: MergeContext, statesDir: string, gatesDir: string, outDir: string, opts: ReportOptions): Promise<{ report: RoutingReport; html: string; stats: ReportStats }> {
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
  const stats: ReportStats = { computed: 0, fromCache: 0 };
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
  const report = buildReport({ name: opts.name, gateMode: ctx.gateMode, topK: ctx.recipe.experts_per_token, state: mode.routedState, gates, experts, prompts, states, randomGates: mode.random !== null, warnings });
  const html = renderHtml(report);
  await mkdir(outDir, { recursive: true });
  await writeWhole(join(outDir, 'routing.json'), JSON.stringify(report) + '\n');
  await writeWhole(join(outDir, 'routing.html'), html);
  await writeFile(join(outDir, 'stats.json'), JSON.stringify(stats, null, 2) + '\n');
  (opts.stats ?? opts.log)?.(`report prompt states: ${stats.computed} computed, ${stats.fromCache} from cache`);
  return { report, html, stats };
}

/** A temporary sibling renamed into place: a reader never sees half a report. */
export async function writeWhole(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

/** The report stage's output, or null when it was not run (its summary and page then stay out of the card). */
export async function readReport(dir: string): Promise<{ report: RoutingReport; html: string } | null> {
  const file = join(dir, 'routing.json');
  if (!existsSync(file)) return null;
  const report = await readStageJson<RoutingReport>(file, ROUTING_SCHEMA, 1, 'report');
  const html = await readFile(join(dir, 'routing.html'), 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  return html === null ? null : { report, html };
}
