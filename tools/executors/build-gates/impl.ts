import type { ExecutorContext } from '@nx/devkit';
import { logger } from '../log';
import { runBuildGates } from '../../../libs/stages/build-gates';
import { runStage } from '../run-stage';

export default function buildGatesExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    const { info } = await runBuildGates(await env.merge(), env.paths.stage('embed-prompts'), env.paths.stage('build-gates'));
    // Routing warnings are printed here only; assemble-experts records them in the plan without repeating them.
    for (const w of info.warnings) logger.warn(`WARNING: ${w}`);
    if (info.deferred) logger.info(`${info.gateMode} gates: drawn by assemble-experts from its seed`);
    else {
      logger.info(`${info.gateMode} gates: ${info.layers} layers x ${info.experts} experts`);
      info.conditionNumbers.forEach((c, l) => logger.debug(`layer ${l}: gate condition number ${c === Infinity ? 'infinite' : c.toPrecision(4)}`));
    }
  });
}
