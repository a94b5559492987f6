import { join, relative, resolve } from 'node:path';
import { defaultCacheDir } from '../../libs/cache';
import type { ExecutorContext } from '@nx/devkit';
import { beginTask, logger, saveNotes, taskProgress } from './log';
import { describeError } from '../../libs/errors';
import { readRecipe } from '../../libs/recipe';
import { checkResolvedModels, loadMergeContext, readModelsFile, type MergeContext, type ResolvedModel } from '../../libs/stages';
import { ensureModelsPresent } from '../../libs/stages';
import { readSlice, stageEntry, type StageEnv } from '../../libs/pipeline';
import { checkHashedInput } from './hashed-input';
import { recordWrite, suspectFiles } from './output-state';
import { stagePaths, type StageOptions, type StagePaths } from './options';
import stageOptionsSchema from './stage-options.json';

/** The pipeline's environment for one Nx task: its options, its folders, Nx's log, the workspace's output record. */
export function nxStageEnv(options: StageOptions, paths: StagePaths, context: ExecutorContext): StageEnv {
  const rel = (p: string) => relative(paths.workspaceRoot, p) || '.';
  const cacheDir = cacheDirOf(options, paths);
  const project = context.projectName!;
  let models: ResolvedModel[] | undefined;
  const env: StageEnv = {
    name: project,
    options: { ...options, evalPrompts: options.evalPrompts ? resolve(paths.projectRoot, options.evalPrompts) : undefined },
    paths: { ...paths, cacheDir, stagesDir: paths.stage('') },
    log: {
      info: (l) => logger.info(l),
      warn: (l) => logger.warn(`WARNING: ${l}`),
      debug: (l) => logger.debug(l),
      // Counts, timings and why a stage ran are true of this run only: notes for the build target, never in
      // the task's cached output.
      stats: (l) => logger.run(l),
      result: (l) => logger.info(l),
    },
    progress: (label) => taskProgress(label),
    async models() {
      if (!models) {
        const file = join(paths.stage('fetch'), 'models.json');
        models = (await readModelsFile(file, paths.roots)).models;
        checkResolvedModels(file, models, await readRecipe(paths.recipe), paths.projectRoot, paths.roots);
        await ensureModelsPresent(models, { cacheDir, log: (l) => logger.run(l) });
        for (const m of models) logger.debug(`input model ${m.ref}: content ${m.contentId}, ${m.source === 'local' ? rel(m.dir) : `hub commit ${m.revision}`}`);
      }
      return models;
    },
    async merge(): Promise<MergeContext> {
      const parsed = await readRecipe(paths.recipe);
      const merge = await loadMergeContext(parsed, await env.models(), { modelBaseDir: paths.projectRoot, allowIdenticalModels: options.allowIdenticalModels, layout: options.layout, seed: options.randomSeed, rng: options.rng });
      logger.debug(`architecture ${merge.arch.name}: ${merge.archWhy}`);
      return merge;
    },
    outputState: {
      // Files of the folder that changed since this workspace wrote them (an edit that kept the size included).
      suspect: () => suspectFiles(paths.workspaceRoot, project, paths.output),
      // What the next build's hash stands on (see output-state.js): this folder as written now.
      record: (files, replaced, probe) => recordWrite(paths.workspaceRoot, project, paths.output, files, replaced, probe),
    },
    // What the report reads must be what Nx hashes for it: the report target's {projectRoot}/**/*.{yml,yaml,jsonl}.
    checkInput: (file) => checkHashedInput(file, { reruns: 'the report', option: 'evalPrompts', projectRoot: paths.projectRoot, workspaceRoot: paths.workspaceRoot, accepts: (r) => /\.(ya?ml|jsonl)$/.test(r), accepted: 'a .yml, .yaml or .jsonl file' }),
  };
  return env;
}

/** Runs one stage of the pipeline table as an Nx task: errors printed in one line, without stack traces. */
export async function runStage(raw: unknown, context: ExecutorContext, stage: string): Promise<{ success: boolean }> {
  const target = context.targetName ?? stage;
  beginTask(stage);
  const result = await runBody(raw, context, stage);
  // This run's notes (why it ran, timings, debug lines), for the build target: never in Nx's cached output.
  if (context.projectName) saveNotes(context.root, context.projectName, target, stage, result.success);
  return result;
}

async function runBody(raw: unknown, context: ExecutorContext, stage: string): Promise<{ success: boolean }> {
  try {
    const entry = stageEntry(stage);
    const given = (raw ?? {}) as Record<string, unknown>;
    // The command line's options reach a stage through its slice (the recipe stage wrote it), never through Nx's
    // forwarding, so that its cache key holds only the options it uses.
    // Options given to this very task (it is the one run) win over those handed on.
    const merged = stage === 'recipe' ? given : { ...given, ...(await readSlice(stagePaths(raw, context).paths.stage('recipe'), entry.name)).options, ...overrides(given, context) };
    const { options, paths } = stagePaths(merged, context);
    const rel = (p: string) => relative(paths.workspaceRoot, p) || '.';
    logger.debug(`${context.targetName}: recipe ${rel(paths.recipe)}, stage outputs ${rel(paths.stage(''))}, options ${JSON.stringify(options)}`);
    const env = nxStageEnv(options, paths, context);
    if (stage === 'recipe') env.overrides = overrides(given, context);
    await entry.run(env);
    return { success: true };
  } catch (e) {
    logger.error(`error: ${describeError(e)}`);
    if (process.env.NX_VERBOSE_LOGGING === 'true') logger.error((e as Error)?.stack ?? String(e));
    return { success: false };
  }
}

/**
 * The options given on the command line: those other than the target's configuration (nx.json, project.json, the
 * plugin), or than the schema's default where the configuration sets none (Nx fills defaults in).
 */
export function overrides(given: Record<string, unknown>, context: Pick<ExecutorContext, 'projectsConfigurations' | 'projectName' | 'targetName' | 'configurationName'>): Record<string, unknown> {
  const target = context.projectsConfigurations?.projects?.[context.projectName!]?.targets?.[context.targetName!];
  const config = { ...(target?.options ?? {}), ...(context.configurationName ? target?.configurations?.[context.configurationName] : {}) } as Record<string, unknown>;
  const properties = (stageOptionsSchema as { properties: Record<string, { default?: unknown }> }).properties;
  const expected = (k: string) => (k in config ? config[k] : properties[k]?.default);
  return Object.fromEntries(Object.entries(given).filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(expected(k))));
}

/** The prompt-state and content-id cache: executor option, else $MOE_FORGE_CACHE, else .moe-cache in the workspace. */
export function cacheDirOf(options: StageOptions, paths: StagePaths): string {
  return options.cacheDir ? resolve(paths.workspaceRoot, options.cacheDir) : defaultCacheDir(paths.workspaceRoot);
}
