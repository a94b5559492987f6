/**
 * The routing report's cost at a size (bench/incremental.ts's recipe: hidden gates, Mixtral, 4 experts, 17 prompts,
 * plus 8 held-out texts): the report stage now runs the merged model on every text (libs/forward/moe.ts), against
 * what the report cost before, the base model's forward pass of the held-out texts (the recipe prompts' states came
 * from embed-prompts), measured in the same run.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readRecipe } from '../libs/recipe';
import { runFetch } from '../libs/stages';
import { runEmbedPrompts } from '../libs/stages';
import { gatesForAssembly, runBuildGates } from '../libs/stages';
import { readPlan, runAssemble } from '../libs/stages';
import { runReport } from '../libs/stages';
import { computePromptStatesIsolated } from '../libs/forward';
import { loadTokenizer } from '../libs/tokenizer';
import { writeFastModel } from './models';
import { SIZES, recipe } from './incremental';
import { timed } from './workspace';
import type { ReportChildResult } from './report-child';

const HELD_OUT = ['python', 'rust', 'poetry', 'history', 'algebra', 'biology', 'cooking', 'travel'].map((t, i) => `A new question ${i} on ${t}: what should a beginner read first, and why?`);

export async function benchReport(tmp: string, size: string, log: (s: string) => void) {
  const spec = SIZES[size];
  if (!spec) throw new Error(`unknown size ${size} (known: ${Object.keys(SIZES).join(', ')})`);
  const dir = join(tmp, `report-${size}`);
  const models = join(dir, 'models');
  for (const m of ['a', 'b']) await writeFastModel(join(models, m), spec);
  const recipeFile = join(dir, 'moe.yml');
  writeFileSync(recipeFile, recipe(models, { extraPrompt: false, noise: 0.01, swapLast: false }));
  // Two held-out texts per expert.
  const evalFile = join(dir, 'eval.yml');
  writeFileSync(evalFile, [0, 1, 2, 3].map((e) => `- expert: ${e}\n  prompts: ${JSON.stringify(HELD_OUT.slice(2 * e, 2 * e + 2))}`).join('\n') + '\n');
  const cacheDir = join(dir, 'cache');
  const work = join(dir, 'work');
  const { merge } = await runFetch(await readRecipe(recipeFile), join(work, 'fetch'), { cacheDir, modelBaseDir: dir });
  await runEmbedPrompts(merge, join(work, 'embed-prompts'), { cacheDir });
  await runBuildGates(merge, join(work, 'embed-prompts'), join(work, 'build-gates'));
  const { gates, warnings } = await gatesForAssembly(merge, join(work, 'build-gates'));
  await runAssemble(merge, join(work, 'assemble-experts'), { maxShardBytes: 5e9, extraWarnings: warnings, gates });
  // Before: the report's own forward pass was the base model on the held-out texts (in the isolated worker, as the report runs it).
  const tok = await loadTokenizer(merge.ctx.base.dir);
  const ids = HELD_OUT.map((t) => tok.encodePrompt(t));
  let t0 = performance.now();
  await computePromptStatesIsolated(merge.ctx.base.dir, ids);
  const baseForwardSeconds = (performance.now() - t0) / 1000;
  // Now: the whole report stage (the same base forward of the held-out texts, then every text through the merged model).
  t0 = performance.now();
  const r = await runReport(merge, join(work, 'embed-prompts'), join(work, 'build-gates'), join(work, 'assemble-experts'), join(work, 'report'), { name: 'bench', cacheDir: join(dir, 'cache-report'), evalPrompts: evalFile });
  const reportSeconds = (performance.now() - t0) / 1000;
  // The merged forward alone against the base forward over the same token ids (every text of the report, all
  // layers), each in a process of its own (bench/report-child.ts) for its own time and peak RSS.
  const texts = [...new Set([...merge.gatedExperts.flatMap((e) => [...(e.spec.positive_prompts ?? []), ...(e.spec.negative_prompts ?? [])]), ...HELD_OUT])];
  const allIds = texts.map((t) => tok.encodePrompt(t));
  const planDir = join(work, 'assemble-experts');
  const plan = await readPlan(planDir, [...new Map([merge.ctx.base, ...merge.ctx.experts.map((e) => e.model), ...merge.ctx.shared.map((e) => e.model)].map((x) => [x.key, x])).values()]);
  const requestFile = join(dir, 'forward-request.json');
  writeFileSync(requestFile, JSON.stringify({ ids: allIds, plan, planDir, baseDir: merge.ctx.base.dir }));
  const base = await child('base', requestFile);
  const merged = await child('merged', requestFile);
  log(`same ${allIds.length} texts: merged forward ${merged.seconds.toFixed(1)} s (peak RSS ${(merged.peakRssKiB / 1024).toFixed(0)} MiB), base forward ${base.seconds.toFixed(1)} s (peak RSS ${(base.peakRssKiB / 1024).toFixed(0)} MiB)`);
  const m = r.report.measured;
  log(`report ${reportSeconds.toFixed(1)} s (${r.stats.mergedTexts} texts, ${r.stats.mergedTokens} tokens through the merged model); base forward of the held-out texts ${baseForwardSeconds.toFixed(1)} s`);
  const E = merge.ctx.experts.length, H = spec.hidden, I = spec.intermediate;
  return {
    reportSeconds,
    baseForwardSeconds,
    merged,
    base,
    texts: r.stats.mergedTexts,
    tokens: r.stats.mergedTokens,
    heldOutTokens: ids.reduce((a, x) => a + x.length, 0),
    // What one MoE layer holds as float32: every expert's three projections and the router (two layers are held).
    layerWeightsF32MiB: (E * 3 * H * I + E * H) * 4 / 2 ** 20,
    top1: m.overall.heldout?.top1 ?? null,
    chance: m.chance.top1,
  };
}

async function child(mode: 'merged' | 'base', requestFile: string): Promise<ReportChildResult> {
  const r = await timed(process.execPath, ['--import', 'tsx', join(__dirname, 'report-child.ts'), mode, requestFile]);
  if (r.code !== 0) throw new Error(`report-child ${mode} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as ReportChildResult;
}
