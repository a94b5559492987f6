import { join, relative, resolve } from 'node:path';
import { defaultCacheDir } from '../../libs/cache';
import type { ExecutorContext } from '@nx/devkit';
import { beginTask, logger, saveNotes } from './log';
import { describeError } from '../../libs/errors';
import { readRecipe } from '../../libs/recipe/parse';
import { checkResolvedModels, loadMergeContext, readModelsFile, type MergeContext, type ResolvedModel } from '../../libs/stages/context';
import { ensureModelsPresent } from '../../libs/stages/fetch';
import { stagePaths, type StageOptions, type StagePaths } from './options';

export interface StageEnv {
  options: StageOptions;
  paths: StagePaths;
  /** The models as the fetch stage resolved them, present on this machine (not for fetch itself). */
  models(): Promise<ResolvedModel[]>;
  /** The recipe and models as the fetch stage resolved them (not for fetch itself). */
  merge(): Promise<MergeContext>;
}

/** Runs one stage: shared option parsing, the merge context, and errors printed without stack traces. */
export async function runStage(raw: unknown, context: ExecutorContext, body: (env: StageEnv) => Promise<void>): Promise<{ success: boolean }> {
  const target = context.targetName ?? 'stage';
  beginTask(target);
  const result = await runBody(raw, context, body);
  // This run's notes (why it ran, timings, debug lines), for the build target: never in Nx's cached output.
  if (context.projectName) saveNotes(context.root, context.projectName, target, target, result.success);
  return result;
}

async function runBody(raw: unknown, context: ExecutorContext, body: (env: StageEnv) => Promise<void>): Promise<{ success: boolean }> {
  try {
    const { options, paths } = stagePaths(raw, context);
    const rel = (p: string) => relative(paths.workspaceRoot, p) || '.';
    logger.debug(`${context.targetName}: recipe ${rel(paths.recipe)}, stage outputs ${rel(paths.stage(''))}, options ${JSON.stringify(options)}`);
    let models: ResolvedModel[] | undefined;
    const env: StageEnv = {
      options,
      paths,
      async models() {
        if (!models) {
          const file = join(paths.stage('fetch'), 'models.json');
          models = (await readModelsFile(file, paths.roots)).models;
          checkResolvedModels(file, models, await readRecipe(paths.recipe), paths.projectRoot, paths.roots);
          await ensureModelsPresent(models, { cacheDir: cacheDirOf(options, paths), log: (l) => logger.run(l) });
          for (const m of models) logger.debug(`input model ${m.ref}: content ${m.contentId}, ${m.source === 'local' ? rel(m.dir) : `hub commit ${m.revision}`}`);
        }
        return models;
      },
      async merge() {
        const parsed = await readRecipe(paths.recipe);
        const merge = await loadMergeContext(parsed, await env.models(), { modelBaseDir: paths.projectRoot, allowIdenticalModels: options.allowIdenticalModels, layout: options.layout, seed: options.randomSeed, rng: options.rng });
        logger.debug(`architecture ${merge.arch.name}: ${merge.archWhy}`);
        return merge;
      },
    };
    await body(env);
    return { success: true };
  } catch (e) {
    logger.error(`error: ${describeError(e)}`);
    if (process.env.NX_VERBOSE_LOGGING === 'true') logger.error((e as Error)?.stack ?? String(e));
    return { success: false };
  }
}

/** The prompt-state and content-id cache: executor option, else $MOE_FORGE_CACHE, else .moe-cache in the workspace. */
export function cacheDirOf(options: StageOptions, paths: StagePaths): string {
  return options.cacheDir ? resolve(paths.workspaceRoot, options.cacheDir) : defaultCacheDir(paths.workspaceRoot);
}
