import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { existsSync } from 'node:fs';
import type { ExecutorContext } from '@nx/devkit';
import { logger } from '../log';
import { checkPlanGates, readPlan } from '../../../libs/stages/assemble';
import { readGates } from '../../../libs/stages/build-gates';
import { runWrite } from '../../../libs/stages/write';
import { cacheDirOf, runStage } from '../run-stage';
import { progressReporter } from '../../../libs/util/progress';
import { readReport } from '../../../libs/stages/report';
import { STAMP_FILE } from '../../../libs/stages/output-folder';
import { recordWrite, suspectFiles } from '../output-state';

export default function writeExecutor(options: unknown, context: ExecutorContext) {
  return runStage(options, context, async (env) => {
    const { options: o, paths } = env;
    const plan = await readPlan(paths.stage('assemble-experts'), await env.models());
    const gates = await readGates(paths.stage('assemble-experts'));
    checkPlanGates(plan, gates, join(paths.stage('assemble-experts'), 'plan.json'));
    const base = plan.models[0]!;
    const routing = await readReport(paths.stage('report'));
    // Files of the folder that changed since this workspace wrote them (an edit that kept the size included).
    const project = context.projectName!;
    const suspect = suspectFiles(paths.workspaceRoot, project, paths.output);
    // A folder that is gone is said once, not as every file it held.
    if (suspect.length) logger.info(existsSync(paths.output) ? `changed since written: ${suspect.join(', ')}` : `model folder ${relative(paths.workspaceRoot, paths.output) || '.'} is missing: writing it again`);
    const result = await runWrite(plan, {
      outPath: paths.output,
      gates,
      recipeText: await readFile(paths.recipe, 'utf8'),
      tokenizerDir: base.dir,
      copyTokenizer: o.copyTokenizer,
      gguf: o.gguf,
      ggufOnly: o.ggufOnly,
      overwrite: o.overwrite,
      recipeFile: paths.recipe,
      cacheDir: cacheDirOf(o, paths),
      recompute: o.recompute,
      warn: (l) => logger.warn(l),
      // Per-shard lines describe this run, not the result: debug, so a cache hit does not replay them as news.
      log: (l) => (/^(writing|kept) /.test(l) ? logger.debug(l) : logger.info(l)),
      debug: (l) => logger.debug(l),
      progress: progressReporter('writing'),
      routing: routing ?? undefined,
      suspect,
    });
    // What the next build's hash stands on (see output-state.js): this folder as written now.
    recordWrite(paths.workspaceRoot, project, paths.output, [...result.files, STAMP_FILE], !result.skipped);
    const out = relative(paths.workspaceRoot, result.outPath) || '.';
    logger.info(`model folder ${out}: ${result.shards} shard${result.shards === 1 ? '' : 's'}`);
    logger.debug(`${result.skipped ? 'unchanged' : 'wrote'} ${out}: ${result.written} shards written, ${result.kept} kept`);
    await mkdir(paths.stage('write'), { recursive: true });
    await writeFile(join(paths.stage('write'), 'stats.json'), JSON.stringify({ skipped: result.skipped, shards: result.shards, written: result.written, kept: result.kept }, null, 2) + '\n');
  });
}
