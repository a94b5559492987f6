import { join } from 'node:path';
import { logger, type ExecutorContext } from '@nx/devkit';
import { runAssemble } from '../../../libs/stages/assemble';
import type { GatesInfo } from '../../../libs/stages/build-gates';
import { readJson, runStage } from '../run-stage';

export default function assembleExpertsExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    const gates = await readJson<GatesInfo>(join(env.paths.stage('build-gates'), 'gates.json'));
    const plan = await runAssemble(await env.merge(), env.paths.stage('assemble-experts'), { maxShardBytes: env.paths.maxShardBytes, extraWarnings: gates.warnings });
    for (const w of plan.warnings) logger.warn(`WARNING: ${w}`);
    logger.info(`${plan.architecture}: ${plan.tensors.length} tensors planned`);
  });
}
