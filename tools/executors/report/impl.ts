import { relative, resolve } from 'node:path';
import type { ExecutorContext } from '@nx/devkit';
import { logger, taskProgress } from '../log';
import { checkHashedInput } from '../hashed-input';
import { runReport } from '../../../libs/stages/report';
import { cacheDirOf, runStage } from '../run-stage';

export default function reportExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    let evalPrompts: string | undefined;
    if (env.options.evalPrompts) {
      evalPrompts = resolve(env.paths.projectRoot, env.options.evalPrompts);
      // What the report reads must be what Nx hashes for it: the report target's {projectRoot}/**/*.{yml,yaml,jsonl}.
      checkHashedInput(evalPrompts, { reruns: 'the report', option: 'evalPrompts', projectRoot: env.paths.projectRoot, workspaceRoot: env.paths.workspaceRoot, accepts: (rel) => /\.(ya?ml|jsonl)$/.test(rel), accepted: 'a .yml, .yaml or .jsonl file' });
    }
    const { report } = await runReport(await env.merge(), env.paths.stage('embed-prompts'), env.paths.stage('build-gates'), env.paths.stage('report'), {
      name: context.projectName!,
      cacheDir: cacheDirOf(env.options, env.paths),
      recompute: env.options.recompute,
      device: env.options.device,
      evalPrompts,
      log: (l) => logger.info(l),
      stats: (l) => logger.run(l),
      progress: taskProgress('report prompt states'),
    });
    const s = report.summary;
    const pct = (x: number | null) => (x === null ? '—' : `${(100 * x).toFixed(0)}%`);
    logger.info(`routing accuracy ${pct(s.accuracy)}${s.heldOutAccuracy !== null ? `, held-out ${pct(s.heldOutAccuracy)}` : ''}; ${s.starving.length} starving expert${s.starving.length === 1 ? '' : 's'}: ${relative(env.paths.workspaceRoot, env.paths.stage('report')) || '.'}/routing.html`);
    // Random routers starve experts by design until trained: one line says so, not one per expert.
    const random = s.starving.filter((x) => / gates are not built from prompts/.test(x.reasons[0] ?? ''));
    if (random.length > 0) logger.info(`${random.length} of ${report.routed} experts win no prompt in some layer, as expected of ${report.gateMode} gates (the router needs training): see the report`);
    for (const x of s.starving) if (!random.includes(x)) logger.warn(`WARNING: ${report.experts[x.expert]!.label} starves in ${x.layers.length} of ${report.layers} layers: ${x.reasons[0]}`);
  });
}
