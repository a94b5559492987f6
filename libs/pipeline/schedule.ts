import { earlyMergeContext, readEvalPrompts, runAssemble } from '../stages';
import type { WriteResult } from '../stages';
import type { StageEnv } from './env';
import { readRecipe } from '../recipe';
import { readStampSync } from '../output-folder';
import { assembleOptions, fetchOptions, PIPELINE, writeStage, type StageName } from './table';

export interface Schedule {
  /** Stages left out (the report, when the command is given no --report). */
  skip?: StageName[];
  /**
   * Write ahead: plan once right after fetch and write the shards that do not hold the routers while the forward
   * pass runs (the final plan differs only in the routers' warnings); the router shards once the stages are done.
   */
  writeAhead: boolean;
}

/** Runs whose early plan came from the models' headers, before fetch (tests read this). */
export const scheduleStats = { early: 0 };

/**
 * The pipeline table in one process, each stage's folder at env.paths.stage(name), in the table's order (each
 * stage after those it reads from). Stages hand each other files, as under Nx: nothing passes in memory but the
 * early plan of writing ahead.
 */
export async function runPipeline(env: StageEnv, schedule: Schedule): Promise<WriteResult> {
  const stages = PIPELINE.filter((s) => !schedule.skip?.includes(s.name));
  // Up to fetch: what the early plan needs (the recipe and the resolved models).
  const split = stages.findIndex((s) => s.name === 'fetch') + 1;
  const head = stages.slice(0, split);
  const middle = stages.slice(split, -1);
  if (split === 0 || stages.at(-1)?.name !== 'write') throw new Error('the pipeline has a fetch stage and ends with write');
  // Held-out prompts are checked before the forward pass, not after it.
  const checkEvalPrompts = async (experts: number) => {
    if (env.options.evalPrompts && middle.some((s) => s.name === 'report')) await readEvalPrompts(env.options.evalPrompts, experts);
  };
  const fetch = head.at(-1)!;
  for (const s of head.slice(0, -1)) await s.run(env);
  // Models on this machine (local, or complete in the Hugging Face cache): the early plan from their headers, and
  // the shards that do not hold the routers written while fetch hashes the models (a first build over a 7B pair
  // reads ~29 GB to hash them before anything else). Only where the write could use it (writeOutput): not over a
  // folder with shards to keep, nor with a GGUF.
  const fresh = schedule.writeAhead && !env.options.gguf && !readStampSync(env.paths.output)?.shards;
  const headers = fresh ? await earlyMergeContext(await readRecipe(env.paths.recipe), fetchOptions(env)) : null;
  if (headers) {
    scheduleStats.early++;
    await checkEvalPrompts(headers.merge.ctx.experts.length);
  } else {
    await fetch.run(env);
    await checkEvalPrompts((await env.merge()).ctx.experts.length);
  }
  if (!schedule.writeAhead) {
    for (const s of middle) await s.run(env);
    return writeStage(env);
  }
  const early = await runAssemble(headers?.merge ?? (await env.merge()), env.paths.stage('assemble-early'), assembleOptions(env));
  const fetched = headers ? fetch.run(env) : Promise.resolve();
  // The content ids, or null when a weight file changed since its header was read (nothing written ahead is kept).
  const ids = headers
    ? fetched.then(async () => {
        const models = await env.models();
        return headers.unchanged(models) ? new Map(models.flatMap((m) => (m.contentId ? [[m.key, m.contentId] as const] : []))) : null;
      })
    : undefined;
  ids?.catch(() => undefined); // fetch's error is late's
  const late = (async () => {
    await fetched;
    for (const s of middle) await s.run(env);
  })();
  try {
    return await writeStage(env, { early, late, ids });
  } catch (e) {
    // The write failed on its own: the stages still running finish (their folders are removed by the caller) and,
    // as before the two ran together, their error is the one reported when both failed.
    const settled = await late.then(() => null, (le: unknown) => ({ le }));
    throw settled ? settled.le : e;
  }
}
