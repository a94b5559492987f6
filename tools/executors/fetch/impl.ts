import type { ExecutorContext } from '@nx/devkit';
import { logger } from '../log';
import { readRecipe } from '../../../libs/recipe/parse';
import { runFetch } from '../../../libs/stages/fetch';
import { cacheDirOf, runStage } from '../run-stage';

export default function fetchExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async ({ options: o, paths }) => {
    const parsed = await readRecipe(paths.recipe);
    await runFetch(parsed, paths.stage('fetch'), {
      cacheDir: cacheDirOf(o, paths),
      recompute: o.recompute,
      modelBaseDir: paths.projectRoot,
      root: paths.workspaceRoot,
      allowIdenticalModels: o.allowIdenticalModels,
      layout: o.layout,
      seed: o.randomSeed,
      rng: o.rng,
      refusePlaceholders: true,
      log: (l) => logger.info(l),
      stats: (l) => logger.run(l),
      debug: (l) => logger.debug(l),
      output: { path: paths.output, recipeFile: paths.recipe, overwrite: o.overwrite, stagesDir: paths.stage('') },
    });
  });
}
