import type { ExecutorContext } from '@nx/devkit';
import { STAGE_NAMES, type StageName } from '../../../libs/pipeline';
import { runStage } from '../run-stage';

/** The stage a target runs: its metadata (the plugin sets it; targets may be renamed), else its own name. */
export function stageOf(context: Pick<ExecutorContext, 'projectsConfigurations'>, project: string, target: string): StageName {
  const config = context.projectsConfigurations?.projects?.[project]?.targets?.[target];
  const stage = (config?.metadata as { moeForgeStage?: string } | undefined)?.moeForgeStage ?? target;
  if (!(STAGE_NAMES as readonly string[]).includes(stage)) throw new Error(`target ${project}:${target} runs ./tools/executors:stage but names no stage (metadata.moeForgeStage: one of ${STAGE_NAMES.join(', ')})`);
  return stage as StageName;
}

/**
 * One executor for every stage of the pipeline table (the plugin's targets name their stage in metadata), so
 * that Nx's batch mode (`--batch` or NX_BATCH_MODE=true) can run a recipe's whole chain in one process: see batch.ts.
 */
export default function stageExecutor(options: unknown, context: ExecutorContext): Promise<{ success: boolean }> {
  return runStage(options, context, stageOf(context, context.projectName!, context.targetName!));
}

/** The executor of one named stage (executors.json's per-stage entries). */
export const namedStage = (stage: StageName) => (options: unknown, context: ExecutorContext) => runStage(options, context, stage);
