import { join, resolve } from 'node:path';
import type { ExecutorContext } from '@nx/devkit';
import { z } from 'zod';
import { checkSeed, checkShardSize } from '../../libs/cli/args';
import { ForgeError } from '../../libs/errors';
import { DEFAULT_SHARD_BYTES } from '../../libs/stages/merge';
import { hubCacheDir } from '../../libs/resolve/settings';
import type { PathRoots } from '../../libs/stages/portable';
import { checkHashedInput } from './hashed-input';

/**
 * Options outside the mergekit YAML, shared by every stage so that `nx run x:build --random-seed=1`
 * forwards them down the chain. stage-options.json is the one schema Nx checks (types, ranges, enums, and no
 * unknown option); this zod schema gives the executors their types and defaults. To add an option, add it to
 * both (test/nx/conventions.test.ts checks that they list the same options).
 */
export const StageOptionsSchema = z.object({
  recipe: z.string().optional(),
  outputPath: z.string().optional(),
  stagesDir: z.string().optional(),
  randomSeed: z.coerce.number().int().nonnegative().default(0),
  layout: z.enum(['classic', 'fused']).default('classic'),
  rng: z.enum(['stream', 'torch']).default('stream'),
  outShardSize: z.union([z.string(), z.number()]).default(String(DEFAULT_SHARD_BYTES)),
  shardOrder: z.enum(['grouped', 'reference']).default('grouped'),
  device: z.enum(['cpu', 'cuda', 'webgpu', 'auto']).default('cpu'),
  overwrite: z.boolean().default(false),
  recompute: z.boolean().default(false),
  allowIdenticalModels: z.boolean().default(false),
  copyTokenizer: z.boolean().default(true),
  gguf: z.enum(['f32', 'f16', 'bf16', 'q8_0']).optional(),
  ggufOnly: z.boolean().default(false),
  cacheDir: z.string().optional(),
  evalPrompts: z.string().optional(),
});
export type StageOptions = z.infer<typeof StageOptionsSchema>;

export interface StagePaths {
  workspaceRoot: string;
  projectRoot: string;
  recipe: string;
  stage(name: string): string;
  output: string;
  maxShardBytes: number;
  /** What stage outputs' paths are relative to (see libs/stages/portable.ts). */
  roots: PathRoots;
}

/**
 * The options as the stages use them. Nx's schema check lets through what JSON Schema cannot say (a seed of
 * 1e20 is a "multiple of 1"): those get the CLI's own checks and messages, and anything else a one-line error.
 */
export function checkStageOptions(raw: unknown): StageOptions {
  const given = (raw ?? {}) as Record<string, unknown>;
  if (given.randomSeed !== undefined) checkSeed(given.randomSeed);
  if (given.outShardSize !== undefined) checkShardSize(given.outShardSize);
  const parsed = StageOptionsSchema.safeParse(raw);
  if (!parsed.success) {
    const i = parsed.error.issues[0]!;
    throw new ForgeError('bad_option', `invalid option: ${i.message}`, { field: i.path.join('.') });
  }
  return parsed.data;
}

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
      maxShardBytes: checkShardSize(options.outShardSize),
      roots: { workspace: context.root, hubCache: hubCacheDir() },
    },
  };
}
