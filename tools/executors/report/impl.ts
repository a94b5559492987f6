import { resolve } from 'node:path';
import type { ExecutorContext } from '@nx/devkit';
import { logger } from '../log';
import { checkHashedInput } from '../hashed-input';
import { runReport } from '../../../libs/stages/report';
import { progressReporter } from '../../../libs/util/progress';
import { cacheDirOf, runStage } from '../run-stage';

export default function reportExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    let evalPrompts: string | undefined;
    if (env.options.evalPrompts) {
      evalPrompts = resolve(env.paths.projectRoot, env.options.evalPrompts);
      // What the report reads must be what Nx hashes for it: the report target's {projectRoot}/**/*.{yml,yaml,jsonl}.
      checkHashedInput(evalPrompts, { reruns: 'the report', option: 'evalPrompts', projectRoot: env.paths.projectRoot, workspaceRoot: env.paths.workspaceRoot, accepts: (rel) => /\.(ya?ml|jsonl)$/.test(rel), accepted: 'a .yml, .yaml or .jsonl file' });
    }
    const { report } = await runReport(await env.merge(), env.paths.stage('embed-prompts'), env.paths.stage('build-gates'), env.paths.stage('assemble-experts'), env.paths.stage('report'), {
      name: context.projectName!,
      cacheDir: cacheDirOf(env.options, env.paths),
      recompute: env.options.recompute,
      device: env.options.device,
      evalPrompts,
      log: (l) => logger.info(l),
      stats: (l) => logger.debug(l),
      progress: progressReporter('report'),
    });
    const m = report.measured;
    const a = m.overall[m.headline];
    const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
    const on = m.headline === 'heldout' ? 'held-out texts' : "the recipe's own prompts (training fit)";
    logger.info(a ? `merged model on ${on}: ${pct(a.top1)} of tokens first to their intended expert (chance ${pct(m.chance.top1)}), ${pct(a.topK)} within the top ${report.topK} (chance ${pct(m.chance.topK)}); MaxVio ${m.overall.load.maxVio.toFixed(2)}: ${env.paths.stage('report')}/routing.html` : `merged model: no positive prompts to measure agreement on: ${env.paths.stage('report')}/routing.html`);
    for (const line of report.advice) logger.warn(`WARNING: ${line}`);
  });
}
