import { progressReporter } from '../util';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { isOurWorkFolder, makeTempWorkFolder } from '../util';
import { inUse } from '../util';
import { leftByDeadProcess } from '../util';
import { readRecipe, type ParsedRecipe } from '../recipe';
import type { WriteResult } from '../stages';
import { changedOutputFiles, recordOutputFiles } from '../output-folder';
import { loadMergeContext, readModelsFile, type MergeContext, type ResolvedModel } from '../stages';
import type { PathRoots } from '../resolve';
import { userCacheDir } from '../cache';
export { userCacheDir };
import { readReport } from '../stages';
import { writeWhole } from '../util';
import { hubSettings } from '../resolve';
import { ForgeError } from '../errors';
import { DEFAULT_SHARD_BYTES, stageOptionsFromApi, type ApiOptions, type StageOptions } from '../options';
import type { PipelineOptions, StageEnv } from './env';
import { runPipeline } from './schedule';
import { mayComputeStates, previousRecipe, speculateHiddenStates } from './speculate';
import { GATE_MODES } from '../gates';
import { startForwardWorker, stopForwardWorker } from '../forward';

/** What a run of the command takes besides the options table's options: the files, the log, the report. */
export interface MergeRun {
  recipeFile: string;
  outPath: string;
  /** Relative model paths resolve against this (the CLI: the working directory; Nx: the recipe's folder). */
  modelBaseDir: string;
  /** Write mergekit_moe_config.yml (the reference's --write-model-card). */
  writeRecipe?: boolean;
  /** Hugging Face settings (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE); default process.env. */
  env?: Record<string, string | undefined>;
  log?: (line: string) => void;
  /** -vv: inputs, the chosen architecture and why, prompt-state cache hits, per-shard decisions. */
  debug?: (line: string) => void;
  warn?: (line: string) => void;
  /** Write the routing report: `file` ends in .html or .json, the other file goes beside it. */
  report?: { file: string; evalPrompts?: string };
}

/**
 * The library's options: the run, and the options table's options by the library's names (`seed`,
 * `maxShardBytes`, the rest as in the table), each optional; made from the table (ApiOptions).
 */
export type MergeOptions = MergeRun & ApiOptions;

export { DEFAULT_SHARD_BYTES };

/** The whole pipeline in one process: the library's options mapped onto the table's once, by stageOptionsFromApi. */
/** A merge's result, and the model folders it read (for the command's no-op memo). */
export type MergeResult = WriteResult & { models: { dir: string; local: boolean }[] };

/** A merge's one line of result, as both front ends print it: `wrote OUT (N shards)`, with its time when given. */
export function resultLine(result: Pick<WriteResult, 'skipped' | 'shards'>, shownPath: string, seconds?: number): string {
  const time = seconds !== undefined ? ` in ${seconds.toFixed(2)} s` : '';
  return `${result.skipped ? 'unchanged' : 'wrote'} ${shownPath} (${result.shards} shard${result.shards === 1 ? '' : 's'})${time}`;
}

export async function mergeRecipe(opts: MergeOptions): Promise<MergeResult> {
  return mergeWithOptions(opts, stageOptionsFromApi(opts));
}

/**
 * The whole pipeline in one process (runPipeline, writing ahead), the stages' folders in a temporary work folder,
 * with the options as the table types them (the command's, parsed by cliStageOptions). The report's held-out
 * prompts come with the report.
 */
export async function mergeWithOptions(run: MergeRun, options: StageOptions): Promise<MergeResult> {
  const parsed = await readRecipe(run.recipeFile);
  // Gates from the prompts' states: the forward worker boots on the idle core while the recipe is checked, the
  // models resolved and the prompts tokenized (it is ended unused when every state is cached).
  const states = GATE_MODES[parsed.recipe.gate_mode].states;
  const before = states === 'hidden' || states === 'router_input' ? await previousRecipe(run.outPath) : null;
  const cacheDir = options.cacheDir ?? userCacheDir();
  if ((states === 'hidden' || states === 'router_input') && mayComputeStates(parsed.recipe, before)) {
    startForwardWorker();
    // The prompts it will likely compute go to it now, before the models are hashed and the cache is read.
    if (states === 'hidden') await speculateHiddenStates(parsed.recipe, before, run.modelBaseDir, options, cacheDir, run.env);
  } else stopForwardWorker(); // one forked at the command's start has nothing to do
  let work: string | null = null;
  let forget: () => void = () => undefined;
  try {
    await removeDeadWorkFolders();
    ({ dir: work, forget } = await makeTempWorkFolder(join(tmpdir(), `moe-forge-${process.pid}-`)));
    const reportFiles = run.report ? reportPaths(run.report.file) : null;
    const env = commandEnv(run, { ...options, evalPrompts: run.report?.evalPrompts, writeRecipe: run.writeRecipe ?? true }, parsed, work, cacheDir, reportFiles);
    const result = await runPipeline(env, { writeAhead: true, skip: run.report ? [] : ['report'] });
    const routing = await readReport(env.paths.stage('report'));
    // After the model: a failed merge leaves no report that looks like the merge's.
    if (routing && reportFiles) {
      await mkdir(dirname(reportFiles.html), { recursive: true });
      await writeWhole(reportFiles.json, JSON.stringify(routing.report) + '\n');
      await writeWhole(reportFiles.html, routing.html);
      run.log?.(`routing report: ${reportFiles.html}`);
    }
    const models = (await env.models()).map((m) => ({ dir: m.dir, local: m.source === 'local' }));
    return { ...result, models };
  } finally {
    stopForwardWorker();
    forget();
    if (work) await rm(work, { recursive: true, force: true });
  }
}

/**
 * The command's environment for the pipeline: its options (every one of the table's, by its name), the work
 * folder, its log, the cache's record of the output.
 */
export function commandEnv(run: MergeRun, options: PipelineOptions, parsed: ParsedRecipe, work: string, cacheDir: string, reportFiles: { html: string; json: string } | null): StageEnv {
  const roots: PathRoots = { workspace: run.modelBaseDir, hubCache: hubSettings({ env: run.env }).cacheDir };
  const stats = run.debug ?? run.log ?? (() => undefined);
  let models: ResolvedModel[] | undefined;
  let merge: MergeContext | undefined;
  const env: StageEnv = {
    name: basename(run.recipeFile).replace(/\.ya?ml$/, ''),
    hubEnv: run.env,
    options,
    paths: {
      roots,
      projectRoot: run.modelBaseDir,
      recipe: run.recipeFile,
      stage: (s) => join(work, s),
      output: run.outPath,
      maxShardBytes: options.outShardSize,
      cacheDir,
      otherWrites: reportFiles ? [{ path: reportFiles.html, label: '--report' }, { path: reportFiles.json, label: '--report' }] : undefined,
    },
    log: {
      info: (l) => run.log?.(l),
      warn: (l) => run.warn?.(l),
      debug: (l) => run.debug?.(l),
      stats,
      result: (l) => run.debug?.(l),
    },
    progress: (label) => progressReporter(label),
    async models() {
      models ??= (await readModelsFile(join(work, 'fetch', 'models.json'), roots)).models;
      return models;
    },
    // One context for the run: the recipe and the models do not change under it.
    async merge() {
      if (!merge) {
        merge = await loadMergeContext(parsed, await env.models(), { modelBaseDir: run.modelBaseDir, allowIdenticalModels: options.allowIdenticalModels, layout: options.layout, seed: options.randomSeed, rng: options.rng });
        run.debug?.(`architecture ${merge.arch.name}: ${merge.archWhy}`);
      }
      return merge;
    },
    outputState: {
      // Files of the folder changed since a merge with this cache wrote them (re-dated edits included).
      suspect: () => changedOutputFiles(cacheDir, run.outPath),
      record: (files, _replaced, probe) => recordOutputFiles(cacheDir, run.outPath, files, probe),
    },
  };
  return env;
}

/**
 * Work folders of runs killed by SIGKILL (their pid is gone); other signals and crashes remove their own. Only a
 * folder holding our marker for that name and pid is removed: a user's folder named like ours is not.
 */
export async function removeDeadWorkFolders(dir = tmpdir()): Promise<void> {
  const entries = await readdir(dir).catch(() => [] as string[]);
  for (const e of entries) {
    const m = /^moe-forge-(\d+)-[A-Za-z0-9]{6}$/.exec(e);
    const p = join(dir, e);
    if (m && isOurWorkFolder(p, Number(m[1])) && leftByDeadProcess(Number(m[1]), p, inUse)) await rm(p, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** `--report FILE`: FILE ends in .html or .json; the other file is written beside it with the same stem. */
export function reportPaths(file: string): { html: string; json: string } {
  const m = /^(.*)\.(html?|json)$/i.exec(file);
  if (!m) throw new ForgeError('bad_flag', `--report needs a file name ending in .html or .json (the other is written beside it), got "${file}"`, { field: '--report' });
  return { html: /^html?$/i.test(m[2]!) ? file : `${m[1]}.html`, json: m[2]!.toLowerCase() === 'json' ? file : `${m[1]}.json` };
}
