import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { GATE_MODES, type PromptStateKind } from '../gates';
import { z } from 'zod';
import { readRecipe, type ParsedRecipe } from '../recipe';
import type { Expert } from '../recipe';
import { checkRecipe } from '../recipe';
import { refusePlaceholders } from '../recipe';
import { checkPlanGates, readPlan, runAssemble, type AssembleOptions } from '../stages';
import { gatesForAssembly, readGates, runBuildGates } from '../stages';
import type { MergeContext } from '../stages';
import { runEmbedPrompts, type EmbedOptions, type PromptStatesIndex } from '../stages';
import { runFetch, type FetchOptions } from '../stages';
import { STAMP_FILE } from '../output-folder';
import { readReport, runReport, type ReportOptions } from '../stages';
import { PROMPT_STATES_SCHEMA, readStageJson, refuseStageFile, writeStageFile } from '../stage-files';
import { runWrite, writeOutput, type LateInputs, type WriteOptions, type WriteResult } from '../stages';
import type { MergePlan } from '../plan';
import { sliceOptions, type OptionName, type OptionStage } from '../options';
import type { StageEnv } from './env';

export const STAGE_NAMES = ['recipe', 'fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report', 'write'] as const;
export type StageName = (typeof STAGE_NAMES)[number];

/** Files a stage reads from an earlier stage's folder; `key`: those that stand for all of them in its cache key. */
export interface StageRead {
  from: StageName;
  files: string[];
  /** Default: every file read. An index (prompt-states.json) stands for its tensors, which are a function of it. */
  key?: string[];
}

// The options table names the same stages but the recipe stage (which takes every option given): a stage added
// to one list and not the other fails the type-check here.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const STAGES_AGREE: Same<Exclude<StageName, 'recipe'>, OptionStage> = true;
void STAGES_AGREE;

export const SLICE_VERSION = 1;
export const sliceFile = (stage: StageName) => `${stage}.slice.json`;
export const SLICE_SCHEMA = z.object({ version: z.literal(SLICE_VERSION), stage: z.enum(STAGE_NAMES), recipe: z.unknown(), options: z.record(z.string(), z.unknown()) });
export type Slice = z.infer<typeof SLICE_SCHEMA>;

/** A stage's slice as the recipe stage wrote it, checked (it may come back from a remote cache). */
export async function readSlice(dir: string, stage: StageName): Promise<Slice> {
  const slice = await readStageJson<Slice>(join(dir, sliceFile(stage)), SLICE_SCHEMA, SLICE_VERSION, 'recipe');
  if (slice.stage !== stage) throw refuseStageFile(join(dir, sliceFile(stage)), `it is the slice of the ${slice.stage} stage`);
  return slice;
}

const withoutPrompts = ({ positive_prompts: _p, negative_prompts: _n, ...rest }: Expert) => rest;
const promptsOf = (e: Expert) => ({ positive_prompts: e.positive_prompts ?? [], negative_prompts: e.negative_prompts ?? [] });
const wholeRecipe = (p: ParsedRecipe) => p.recipe;

export interface StageDecl {
  name: StageName;
  /** Nx's description of the target. */
  description: string;
  reads: StageRead[];
  /** Files it writes into its own folder (its Nx output is the folder). */
  writes: string[];
  /**
   * What its cache key holds besides the files it reads and the code: the recipe, project files an option names,
   * the packages whose code it runs (their versions, from the lockfile), a runtime input.
   */
  hashes: { recipe: boolean; projectFiles?: string[]; packages: string[]; runtime?: 'model-ids' | 'output-state' };
  /**
   * The part of the recipe its work depends on, written by the recipe stage as <stage>.slice.json and hashed in
   * its place (the stage reads moe.yml itself: what it reads beyond the slice must not change its output).
   */
  slice(recipe: ParsedRecipe): unknown;
  /**
   * The options given on the command line that reach it, through its slice (every stage after the recipe stage
   * ignores the options Nx would forward, so that a new shard size does not re-run the report). Not declared here:
   * read from the options table (`sliceOptions`), whose rows say which stages read each option.
   */
  readonly options: readonly OptionName[];
  /** Example options for `nx run <recipe>:<stage> --help`. */
  example: Record<string, unknown>;
  run(env: StageEnv): Promise<unknown>;
}

// ----- each stage's options, put together once for both front ends -----

export function fetchOptions(env: StageEnv): FetchOptions {
  const o = env.options;
  return {
    cacheDir: env.paths.cacheDir,
    recompute: o.recompute,
    modelBaseDir: env.paths.projectRoot,
    root: env.paths.roots.workspace,
    allowIdenticalModels: o.allowIdenticalModels,
    layout: o.layout,
    seed: o.randomSeed,
    rng: o.rng,
    log: env.log.info,
    warn: env.log.warn,
    stats: env.log.stats,
    debug: env.log.debug,
    env: env.hubEnv,
    refusePlaceholders: true,
    // Every path the run writes, checked against every input and the caches before any download or forward pass.
    output: { path: env.paths.output, recipeFile: env.paths.recipe, evalPrompts: env.options.evalPrompts, reports: env.paths.otherWrites, overwrite: env.options.overwrite, stagesDir: env.paths.stagesDir },
  };
}

export function embedOptions(env: StageEnv): EmbedOptions {
  return {
    cacheDir: env.paths.cacheDir,
    recompute: env.options.recompute,
    device: env.options.device,
    forwardPrecision: env.options.forwardPrecision,
    log: env.log.info,
    warn: env.log.warn,
    stats: env.log.stats,
    debug: env.log.debug,
    progress: env.progress('prompt states'),
  };
}

export function reportOptions(env: StageEnv): ReportOptions {
  return {
    name: env.name,
    cacheDir: env.paths.cacheDir,
    recompute: env.options.recompute,
    device: env.options.device,
    evalPrompts: env.options.evalPrompts,
    log: env.log.info,
    warn: env.log.warn,
    stats: env.log.stats,
    progress: env.progress('report'),
  };
}

export function assembleOptions(env: StageEnv): AssembleOptions {
  return { maxShardBytes: env.paths.maxShardBytes, shardOrder: env.options.shardOrder, roots: env.paths.roots };
}

/** The write's options but for the plan's late inputs (gates, routing report). */
export function writeOptions(env: StageEnv, recipeText: string, tokenizerDir: string, suspect: string[]): Omit<WriteOptions, 'gates' | 'routing'> {
  const o = env.options;
  return {
    outPath: env.paths.output,
    recipeText,
    tokenizerDir,
    copyTokenizer: o.copyTokenizer,
    gguf: o.gguf,
    ggufOnly: o.ggufOnly,
    ggufSplitBytes: o.gguf !== undefined ? o.ggufSplitMaxSize : undefined,
    writeRecipe: o.writeRecipe ?? true,
    overwrite: o.overwrite,
    recompute: o.recompute,
    recipeFile: env.paths.recipe,
    evalPrompts: o.evalPrompts,
    cacheDir: env.paths.cacheDir,
    warn: env.log.warn,
    // What the write did (per shard, or that nothing changed) is true of this run only: stats, which a cache hit
    // does not replay.
    log: (l) => env.log.stats(l),
    debug: env.log.debug,
    progress: env.progress('writing'),
    suspect,
  };
}

// ----- what both front ends say about a stage's result -----

/** Routing warnings: build-gates says its own; assemble-experts only those of gates it drew itself (random modes). */
export function newPlanWarnings(merge: MergeContext, plan: MergePlan, gateWarnings: string[]): string[] {
  const printed = GATE_MODES[merge.ctx.gateMode].random ? [] : gateWarnings;
  return plan.warnings.filter((w) => !printed.includes(w));
}

/** The stamp and the written files, recorded for the next build's check of the folder. */
export function finishWrite(env: StageEnv, result: WriteResult): void {
  // Just written: the file system's clock may be probed (recordKeys), so that the record need not wait.
  env.outputState.record([...result.files, STAMP_FILE], !result.skipped, true);
}

/** Says, once, which files of the output folder changed since written (or that it is gone). */
export function outputSuspects(env: StageEnv, workspaceRoot: string): string[] {
  const suspect = env.outputState.suspect();
  if (suspect.length) env.log.stats(existsSync(env.paths.output) ? `changed since written: ${suspect.join(', ')}` : `model folder ${relative(workspaceRoot, env.paths.output) || '.'} is missing: writing it again`);
  return suspect;
}

/** What the write takes from the stages before it, read back from their folders as every stage reads them. */
export async function writeInputs(env: StageEnv): Promise<LateInputs> {
  const dir = env.paths.stage('assemble-experts');
  const plan = await readPlan(dir, await env.models());
  const gates = await readGates(dir);
  checkPlanGates(plan, gates, join(dir, 'plan.json'));
  const routing = await readReport(env.paths.stage('report'));
  return { plan, gates, routing: routing ?? undefined };
}

/**
 * The write stage. `ahead` is the command's scheduling: the shards that do not hold the routers are written from
 * an early plan while `late` (the stages after fetch) runs; the rest once its files are there. `ids`: the early
 * plan was made from the models' headers before fetch hashed them; their content ids by model key, once known
 * (null: a model's weight file changed since its header was read).
 */
export async function writeStage(env: StageEnv, ahead?: { early: MergePlan; late: Promise<void>; ids?: Promise<ReadonlyMap<string, string> | null> }): Promise<WriteResult> {
  const workspace = env.paths.roots.workspace;
  const suspect = outputSuspects(env, workspace);
  let result: WriteResult;
  if (ahead) {
    const opts = writeOptions(env, await readFile(env.paths.recipe, 'utf8'), ahead.early.models[0]!.dir!, suspect);
    result = await writeOutput(ahead.early, ahead.late.then(() => writeInputs(env)), opts, true, ahead.ids);
  } else {
    const { plan, gates, routing } = await writeInputs(env);
    result = await runWrite(plan, { ...writeOptions(env, await readFile(env.paths.recipe, 'utf8'), plan.models[0]!.dir!, suspect), gates, routing });
  }
  finishWrite(env, result);
  const out = relative(workspace, result.outPath) || '.';
  env.log.result(`model folder ${out}: ${result.shards} shard${result.shards === 1 ? '' : 's'}`);
  env.log.debug(`${result.skipped ? 'unchanged' : 'wrote'} ${out}: ${result.written} shards written, ${result.kept} kept`);
  await mkdir(env.paths.stage('write'), { recursive: true });
  await writeFile(join(env.paths.stage('write'), 'stats.json'), JSON.stringify({ skipped: result.skipped, shards: result.shards, written: result.written, kept: result.kept }, null, 2) + '\n');
  return result;
}

// ----- the table -----

const MODELS: StageRead = { from: 'fetch', files: ['models.json'] };
const STATES: StageRead = { from: 'embed-prompts', files: ['prompt-states.json', 'prompt-states.safetensors'], key: ['prompt-states.json'] };
const GATES: StageRead = { from: 'build-gates', files: ['gates.json', 'gates.safetensors'], key: ['gates.json'] };

const slice = (stage: StageName): StageRead => ({ from: 'recipe', files: [sliceFile(stage)] });

/** A stage as declared below; its options come from the options table. */
type StageSpec = Omit<StageDecl, 'options'>;

const SPECS: readonly StageSpec[] = [
  {
    name: 'recipe',
    description: 'Read and check the recipe and the options given, and split them per stage (<stage>.slice.json): each stage is cached on the part it uses.',
    reads: [],
    writes: STAGE_NAMES.map(sliceFile),
    hashes: { recipe: true, packages: ['yaml', 'zod'] },
    slice: wholeRecipe,
    example: {},
    async run(env) {
      const parsed = await readRecipe(env.paths.recipe);
      // What needs the recipe alone is checked here, once: a prompt edit does not re-run fetch, which checks the rest.
      checkRecipe(parsed, { allowIdenticalModels: env.options.allowIdenticalModels });
      refusePlaceholders(parsed);
      const dir = env.paths.stage('recipe');
      await mkdir(dir, { recursive: true });
      for (const s of PIPELINE) {
        const options = Object.fromEntries(Object.entries(env.overrides ?? {}).filter(([k]) => (s.options as readonly string[]).includes(k)));
        const body: Slice = { version: SLICE_VERSION, stage: s.name, recipe: s.slice(parsed), options };
        await writeStageFile(join(dir, sliceFile(s.name)), JSON.stringify(body, null, 1) + '\n');
      }
    },
  },
  {
    name: 'fetch',
    description: 'Resolve the models, validate recipe and models, write models.json (cached on the models\' content ids and Hub commits).',
    reads: [slice('fetch')],
    writes: ['models.json', 'base-model.json'],
    // The models' content ids (memoised by path and stat key): a model edited in place re-runs fetch.
    hashes: { recipe: false, packages: ['yaml', 'zod', 'cacache', '@huggingface/hub'], runtime: 'model-ids' },
    // Not the prompts: they are checked by the recipe stage and used by the stages after.
    slice: (p) => ({ ...p.recipe, experts: p.recipe.experts.map(withoutPrompts), shared_experts: p.recipe.shared_experts?.map(withoutPrompts) }),
    example: {},
    async run(env) {
      const { models, merge } = await runFetch(await readRecipe(env.paths.recipe), env.paths.stage('fetch'), fetchOptions(env));
      // The base's content alone, for the stages whose work depends on no other model (embed-prompts).
      const base = models.models.find((m) => m.key === merge.ctx.base.key)!;
      await writeFile(join(env.paths.stage('fetch'), 'base-model.json'), JSON.stringify({ version: 1, ...(base.contentId ? { contentId: base.contentId } : { model: base }) }) + '\n');
    },
  },
  {
    name: 'embed-prompts',
    description: 'Tokenize prompts and compute their states; per-prompt states are cached by content.',
    // Of the models, the base's content alone (base-model.json): an expert's weights do not change prompt states.
    reads: [slice('embed-prompts'), { from: 'fetch', files: ['models.json'], key: ['base-model.json'] }],
    writes: ['prompt-states.json', 'prompt-states.safetensors', 'stats.json'],
    hashes: { recipe: false, packages: ['yaml', 'zod', 'cacache', '@huggingface/tokenizers', 'onnxruntime-node'] },
    // The base (its reference: an override_architecture), the mode and the prompts, in the recipe's order.
    slice: (p) => ({ base_model: p.recipe.base_model, gate_mode: p.recipe.gate_mode, experts: p.recipe.experts.map(promptsOf), shared_experts: p.recipe.shared_experts?.map(({ source_model: _m, ...rest }) => rest) }),
    example: {},
    async run(env) {
      const index = await runEmbedPrompts(await env.merge(), env.paths.stage('embed-prompts'), embedOptions(env));
      // Each kind of prompt state says what it is (the type-checker asks a new kind for its words).
      const what: Record<Exclude<PromptStateKind, 'none'>, string> = { hidden: `${index.layers} layers, ${index.device}`, router_input: `every token's router input, ${index.layers} layers, ${index.device}`, cheap_embed: 'token embeddings' };
      env.log.result(index.mode === 'none' ? 'no prompt states needed (random gates)' : `prompt states of ${index.prompts.length} prompt${index.prompts.length === 1 ? '' : 's'} (${what[index.mode]})`);
    },
  },
  {
    name: 'build-gates',
    description: 'Compute router weights from prompt states (gates.safetensors, gates.json).',
    reads: [slice('build-gates'), MODELS, STATES],
    writes: ['gates.json', 'gates.safetensors'],
    hashes: { recipe: false, packages: ['yaml', 'zod'] },
    slice: wholeRecipe,
    example: {},
    async run(env) {
      const { info } = await runBuildGates(await env.merge(), env.paths.stage('embed-prompts'), env.paths.stage('build-gates'));
      // Routing warnings are said here; assemble-experts records them in the plan without repeating them.
      for (const w of info.warnings) env.log.warn(w);
      if (info.deferred) env.log.result(`${info.gateMode} gates: drawn by assemble-experts from its seed`);
      else {
        env.log.result(`${info.gateMode} gates: ${info.layers} layers x ${info.experts} experts`);
        info.conditionNumbers.forEach((c, l) => env.log.debug(`layer ${l}: gate condition number ${c === Infinity ? 'infinite' : c.toPrecision(4)}`));
      }
    },
  },
  {
    name: 'assemble-experts',
    description: 'Plan the output: architecture, config.json, every tensor with its sources (plan.json).',
    // prompt-states.json: only its device, to say where --device belongs.
    reads: [slice('assemble-experts'), MODELS, { from: 'embed-prompts', files: ['prompt-states.json'] }, GATES],
    writes: ['plan.json', 'gates.safetensors'],
    hashes: { recipe: false, packages: ['yaml', 'zod'] },
    // A new seed draws new random gates here, a new shard size makes a new plan.
    slice: wholeRecipe,
    example: { randomSeed: 1 },
    async run(env) {
      const merge = await env.merge();
      // Command-line options stop at this stage (earlier stages stay cached); a device meant for the forward
      // pass would be lost silently, so say where it belongs.
      const states = await readStageJson<PromptStatesIndex>(join(env.paths.stage('embed-prompts'), 'prompt-states.json'), PROMPT_STATES_SCHEMA, 1, 'embed-prompts');
      if (states.device !== null && states.device !== env.options.device) {
        env.log.warn(`--device ${env.options.device} does not reach embed-prompts, which ran on ${states.device}: set it there (nx run <recipe>:embed-prompts --device=${env.options.device}, or "device" in its options in nx.json or project.json).`);
      }
      const { gates, warnings } = await gatesForAssembly(merge, env.paths.stage('build-gates'));
      const plan = await runAssemble(merge, env.paths.stage('assemble-experts'), { ...assembleOptions(env), extraWarnings: warnings, gates });
      for (const w of newPlanWarnings(merge, plan, warnings)) env.log.warn(w);
      env.log.result(`${plan.architecture} (${plan.layout} layout, ${plan.outDtype ?? 'base dtype'}): ${plan.tensors.length} tensors planned`);
      env.log.debug(`architecture ${plan.architecture}: ${merge.archWhy}`);
    },
  },
  {
    name: 'report',
    description: 'Routing report (routing.json, routing.html): the merged model (plan.json and its routers) run on every token of the held-out texts and the prompts: agreement with the intended expert beside chance, load, margins, advice.',
    // The merged model that plan.json and the gates describe (it runs after assemble-experts).
    reads: [slice('report'), MODELS, STATES, GATES, { from: 'assemble-experts', files: ['plan.json', 'gates.safetensors'], key: ['plan.json'] }],
    writes: ['routing.json', 'routing.html', 'stats.json'],
    // Held-out prompt files (evalPrompts) in the recipe's folder; not the recipe, which its slice stands for.
    hashes: { recipe: false, projectFiles: ['{projectRoot}/**/*.yml', '{projectRoot}/**/*.yaml', '{projectRoot}/**/*.jsonl', '!{projectRoot}/moe.yml'], packages: ['yaml', 'zod', 'cacache', '@huggingface/tokenizers', 'onnxruntime-node'] },
    // A new seed draws new random gates, which the report routes through.
    slice: wholeRecipe,
    example: { evalPrompts: 'held-out.yml' },
    async run(env) {
      if (env.options.evalPrompts) env.checkInput?.(env.options.evalPrompts, 'evalPrompts');
      const { report } = await runReport(await env.merge(), env.paths.stage('embed-prompts'), env.paths.stage('build-gates'), env.paths.stage('assemble-experts'), env.paths.stage('report'), reportOptions(env));
      const m = report.measured;
      const a = m.overall[m.headline];
      const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
      const page = `${relative(env.paths.roots.workspace, env.paths.stage('report')) || '.'}/routing.html`;
      const on = m.headline === 'heldout' ? 'held-out texts' : "the recipe's own prompts (training fit)";
      env.log.result(a ? `merged model on ${on}: ${pct(a.top1)} of tokens first to their intended expert (chance ${pct(m.chance.top1)}), ${pct(a.topK)} within the top ${report.topK} (chance ${pct(m.chance.topK)}); MaxVio ${m.overall.load.maxVio.toFixed(2)}: ${page}` : `merged model: no positive prompts to measure agreement on: ${page}`);
      // Random routers starve experts by design until trained: one line says so, not one per expert.
      const random = report.summary.starving.filter((x) => / gates are not built from prompts/.test(x.reasons[0] ?? ''));
      if (random.length > 0) env.log.info(`${random.length} of ${report.routed} experts win no prompt in some layer, as expected of ${report.gateMode} gates (the router needs training): see the report`);
      for (const line of report.advice) env.log.warn(line);
    },
  },
  {
    name: 'write',
    description: 'Stream the model folder from the plan; a cache hit when neither the inputs nor the folder changed (the folder itself is not an Nx output).',
    // routing.html: a companion file of the model folder. Not prompt-states: the plan and gates stand for them.
    reads: [slice('write'), MODELS, { from: 'assemble-experts', files: ['plan.json', 'gates.safetensors'] }, { from: 'report', files: ['routing.json', 'routing.html'] }],
    writes: ['stats.json'],
    // A token standing for "the model folders this workspace wrote are as written" plus the base's chat template
    // (see output-state.js): an untouched workspace's build is a cache hit, a deleted or edited folder is written again.
    hashes: { recipe: false, packages: ['yaml', 'zod', '@huggingface/tokenizers'], runtime: 'output-state' },
    // The recipe's text: it is copied into the model folder (mergekit_moe_config.yml).
    slice: (p) => ({ text: p.text }),
    example: { outputPath: 'out/<project>' },
    run: (env) => writeStage(env),
  },
];

/** The recipe stage hands on nothing: it takes every option given, and writes each stage's into its slice. */
export const PIPELINE: readonly StageDecl[] = SPECS.map((s) => ({ ...s, options: s.name === 'recipe' ? [] : sliceOptions(s.name) }));

/** A stage's entry by name; throws for a name the table does not hold. */
export function stageEntry(name: string): StageDecl {
  const s = PIPELINE.find((d) => d.name === name);
  if (!s) throw new Error(`no stage "${name}" (stages: ${STAGE_NAMES.join(', ')})`);
  return s;
}

/**
 * The stages a stage runs directly after: those it reads from, less those already before one of them. Nx's
 * dependsOn and the command's order both come from this, so a new read (the report reading the plan) moves
 * the stage in both.
 */
export function upstream(name: StageName): StageName[] {
  const direct = [...new Set(stageEntry(name).reads.map((r) => r.from))];
  const before = (s: StageName): Set<StageName> => new Set(stageEntry(s).reads.flatMap((r) => [r.from, ...before(r.from)]));
  return direct.filter((s) => !direct.some((o) => o !== s && before(o).has(s)));
}

/** The stage files that make a stage's cache key, by file name (unique across stages). */
export function keyFiles(name: StageName): string[] {
  return [...new Set(stageEntry(name).reads.flatMap((r) => r.key ?? r.files))];
}

