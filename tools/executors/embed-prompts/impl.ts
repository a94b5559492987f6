import { logger, type ExecutorContext } from '@nx/devkit';
import { runEmbedPrompts } from '../../../libs/stages/embed-prompts';
import { runStage } from '../run-stage';
import { resolve } from 'node:path';
import { defaultCacheDir } from '../../../libs/cache';
import { progressReporter } from '../../../libs/stages/progress';

export default function embedPromptsExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    await runEmbedPrompts(await env.merge(), env.paths.stage('embed-prompts'), {
      cacheDir: env.options.cacheDir ? resolve(env.paths.workspaceRoot, env.options.cacheDir) : defaultCacheDir(env.paths.workspaceRoot),
      device: env.options.device,
      log: (l) => logger.info(l),
      progress: progressReporter('prompt states'),
    });
  });
}
