import type { ExecutorContext } from '@nx/devkit';
import { logger } from '../log';
import { runEmbedPrompts } from '../../../libs/stages/embed-prompts';
import { cacheDirOf, runStage } from '../run-stage';
import { progressReporter } from '../../../libs/stages/progress';

export default function embedPromptsExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    await runEmbedPrompts(await env.merge(), env.paths.stage('embed-prompts'), {
      cacheDir: cacheDirOf(env.options, env.paths),
      device: env.options.device,
      log: (l) => logger.info(l),
      progress: progressReporter('prompt states'),
    });
  });
}
