import type { ExecutorContext } from '@nx/devkit';
import { logger, taskProgress } from '../log';
import { runEmbedPrompts } from '../../../libs/stages/embed-prompts';
import { cacheDirOf, runStage } from '../run-stage';

export default function embedPromptsExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    const index = await runEmbedPrompts(await env.merge(), env.paths.stage('embed-prompts'), {
      cacheDir: cacheDirOf(env.options, env.paths),
      recompute: env.options.recompute,
      device: env.options.device,
      log: (l) => logger.info(l),
      // Counts and timings of this run: a note for the build target, never replayed from Nx's cache.
      stats: (l) => logger.run(l),
      debug: (l) => logger.debug(l),
      progress: taskProgress('prompt states'),
    });
    logger.info(index.mode === 'none' ? 'no prompt states needed (random gates)' : `prompt states of ${index.prompts.length} prompt${index.prompts.length === 1 ? '' : 's'} (${index.mode === 'hidden' ? `${index.layers} layers, ${index.device}` : 'token embeddings'})`);
  });
}
