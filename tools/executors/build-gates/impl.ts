import type { ExecutorContext } from '@nx/devkit';
import { logger } from '../log';
import { runBuildGates } from '../../../libs/stages/build-gates';
import { runStage } from '../run-stage';

export default function buildGatesExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    const { info } = await runBuildGates(await env.merge(), env.paths.stage('embed-prompts'), env.paths.stage('build-gates'));
    for (const w of info.warnings) logger.warn(`WARNING: ${w}`);
  });
}
