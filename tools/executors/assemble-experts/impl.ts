import type { ExecutorContext } from '@nx/devkit';
import { logger } from '../log';
import { runAssemble } from '../../../libs/stages/assemble';
import { gatesForAssembly } from '../../../libs/stages/build-gates';
import { runStage } from '../run-stage';

export default function assembleExpertsExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    const merge = await env.merge();
    const { gates, warnings } = await gatesForAssembly(merge, env.paths.stage('build-gates'));
    const plan = await runAssemble(merge, env.paths.stage('assemble-experts'), { maxShardBytes: env.paths.maxShardBytes, extraWarnings: warnings, gates });
    for (const w of plan.warnings) logger.warn(`WARNING: ${w}`);
    logger.info(`${plan.architecture}: ${plan.tensors.length} tensors planned`);
  });
}
