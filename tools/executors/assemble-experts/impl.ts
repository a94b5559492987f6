import type { ExecutorContext } from '@nx/devkit';
import { logger } from '../log';
import { runAssemble } from '../../../libs/stages/assemble';
import { gatesForAssembly } from '../../../libs/stages/build-gates';
import { GATE_MODES } from '../../../libs/gates/modes';
import { runStage } from '../run-stage';
import { PROMPT_STATES_SCHEMA, readStageJson } from '../../../libs/stages/stage-files';
import type { PromptStatesIndex } from '../../../libs/stages/embed-prompts';
import { join } from 'node:path';

export default function assembleExpertsExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    const merge = await env.merge();
    // Command-line options stop at this stage (earlier stages stay cached); a device meant for the forward
    // pass would be lost silently, so say where it belongs.
    const states = await readStageJson<PromptStatesIndex>(join(env.paths.stage('embed-prompts'), 'prompt-states.json'), PROMPT_STATES_SCHEMA, 1, 'embed-prompts');
    if (states.device !== null && states.device !== env.options.device) {
      logger.warn(`WARNING: --device ${env.options.device} does not reach embed-prompts, which ran on ${states.device}: set it there (nx run <recipe>:embed-prompts --device=${env.options.device}, or "device" in its options in nx.json or project.json).`);
    }
    const { gates, warnings: gateWarnings } = await gatesForAssembly(merge, env.paths.stage('build-gates'));
    const plan = await runAssemble(merge, env.paths.stage('assemble-experts'), { maxShardBytes: env.paths.maxShardBytes, shardOrder: env.options.shardOrder, extraWarnings: gateWarnings, gates, roots: env.paths.roots });
    // build-gates already printed its routing warnings; random gates are drawn here, so theirs are new.
    const printed = GATE_MODES[merge.ctx.gateMode].random ? [] : gateWarnings;
    for (const w of plan.warnings) if (!printed.includes(w)) logger.warn(`WARNING: ${w}`);
    logger.info(`${plan.architecture} (${plan.layout} layout, ${plan.outDtype ?? 'base dtype'}): ${plan.tensors.length} tensors planned`);
    logger.debug(`architecture ${plan.architecture}: ${merge.archWhy}`);
  });
}
