import { join, resolve } from 'node:path';
import type { ExecutorContext } from '@nx/devkit';
import { parseStageOptions, type StageOptions } from '../../libs/options';
import { hubCacheDir } from '../../libs/resolve';
import type { PathRoots } from '../../libs/resolve';
import { checkHashedInput } from './hashed-input';

export type { StageOptions };

export interface StagePaths {
  workspaceRoot: string;
  projectRoot: string;
  recipe: string;
  stage(name: string): string;
  output: string;
  maxShardBytes: number;
  /** What stage outputs' paths are relative to (see libs/resolve/portable.ts). */
  roots: PathRoots;
}

/**
 * The options as the stages use them, from the one options table (libs/options): Nx has checked them against
 * stage-options.json (made from the same table); what JSON Schema cannot say (a seed of 1e20 is a "multiple of
 * 1") gets the command's own check and message.
 */
export const checkStageOptions = (raw: unknown): StageOptions => parseStageOptions(raw);

export function stagePaths(raw: unknown, context: ExecutorContext): { options: StageOptions; paths: StagePaths } {
  const options = checkStageOptions(raw);
  const name = context.projectName!;
  const projectRoot = resolve(context.root, context.projectsConfigurations!.projects[name]!.root);
  const stagesDir = resolve(context.root, options.stagesDir ?? join('dist', 'stages', name));
  const recipe = resolve(projectRoot, options.recipe ?? 'moe.yml');
  // Every stage reads the recipe; the file Nx hashes as the recipe is the folder's moe.yml (nx.json's "recipe").
  if (options.recipe !== undefined) checkHashedInput(recipe, { reruns: 'every stage', option: 'recipe', projectRoot, workspaceRoot: context.root, accepts: (rel) => rel === 'moe.yml', accepted: "the folder's moe.yml (the file Nx hashes as the recipe)" });
  return {
    options,
    paths: {
      workspaceRoot: context.root,
      projectRoot,
      recipe,
      stage: (s) => join(stagesDir, s),
      output: resolve(context.root, options.outputPath ?? join('dist', 'models', name)),
      maxShardBytes: options.outShardSize,
      roots: { workspace: context.root, hubCache: hubCacheDir() },
    },
  };
}
