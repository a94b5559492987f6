import { logger, type ExecutorContext } from '@nx/devkit';
import { runEmbedPrompts } from '../../../libs/stages/embed-prompts';
import { runStage } from '../run-stage';

export default function embedPromptsExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    const index = await runEmbedPrompts(await env.merge(), env.paths.stage('embed-prompts'));
    logger.info(`prompt states: ${index.computed} computed, ${index.fromCache} from cache`);
  });
}
