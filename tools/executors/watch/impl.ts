import { relative } from 'node:path';
import type { ExecutorContext } from '@nx/devkit';
import { describeError } from '../../../libs/errors';
import { mergeWithOptions, resultLine, watchRecipe } from '../../../libs/pipeline';
import { verbose } from '../log';
import { stagePaths } from '../options';
import { cacheDirOf, overrides } from '../run-stage';

/**
 * The options a build's stages would take: each stage target's configuration (nx.json, project.json, the
 * plugin's), this target's, then the command line's (those that differ from this target's configuration).
 */
function buildOptions(raw: unknown, context: ExecutorContext): Record<string, unknown> {
  const targets = context.projectsConfigurations?.projects?.[context.projectName!]?.targets ?? {};
  const configured = (name: string) => {
    const t = targets[name];
    return { ...(t?.options ?? {}), ...(context.configurationName ? t?.configurations?.[context.configurationName] : {}) } as Record<string, unknown>;
  };
  const stages = Object.keys(targets).filter((n) => (targets[n]!.metadata as { moeForgeStage?: string } | undefined)?.moeForgeStage);
  return Object.assign({}, ...stages.map(configured), configured(context.targetName!), overrides((raw ?? {}) as Record<string, unknown>, context));
}

/**
 * The watch target: the recipe's whole build in this one process (as `mergekit-moe --watch` runs it) into the
 * build's model folder, then again each time moe.yml is saved, until Ctrl-C. Nx's cache is neither read nor written
 * (the prompt-state cache is: a later `build` computes no state the watch did); a later `build` finds the folder as
 * the watch left it, and its write stage keeps every file that is what its plan says.
 */
export default async function* watchTarget(raw: unknown, context: ExecutorContext): AsyncGenerator<{ success: boolean }> {
  let started: () => void = () => undefined;
  const first = new Promise<void>((r) => (started = r));
  let watching: Promise<void> | undefined;
  try {
    const { options, paths } = stagePaths(buildOptions(raw, context), context);
    const rel = (p: string) => relative(paths.workspaceRoot, p) || '.';
    const say = (l: string) => process.stderr.write(l + '\n');
    const build = async () => {
      const t0 = performance.now();
      try {
        const r = await mergeWithOptions(
          { recipeFile: paths.recipe, outPath: paths.output, modelBaseDir: paths.projectRoot, log: verbose() ? say : undefined, warn: (l) => say(`WARNING: ${l}`) },
          { ...options, cacheDir: cacheDirOf(options, paths) },
        );
        process.stdout.write(resultLine(r, rel(r.outPath), (performance.now() - t0) / 1000) + '\n');
      } catch (e) {
        say(`error: ${describeError(e)}`);
      } finally {
        started();
      }
    };
    watching = watchRecipe(paths.recipe, paths.projectRoot, options, build, { say });
  } catch (e) {
    process.stderr.write(`error: ${describeError(e)}\n`);
    yield { success: false };
    return;
  }
  // Running, as a served app is once it listens: a recipe broken at the start is said and waited on, like a later one.
  await first;
  yield { success: true };
  await watching;
}
