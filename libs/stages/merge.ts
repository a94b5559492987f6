import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readRecipe } from '../recipe/parse';
import { runFetch } from './fetch';
import { runEmbedPrompts } from './embed-prompts';
import { gatesForAssembly, runBuildGates } from './build-gates';
import { runAssemble } from './assemble';
import { runWrite, type WriteResult } from './write';
import { progressReporter } from './progress';
import { CACHE_ENV } from '../cache';
import type { ShardOrder } from '../plan/types';
import { homedir } from 'node:os';
import { resolve } from 'node:path';

/** The command line has no workspace: its cache lives with the user's other caches. */
export function userCacheDir(): string {
  return process.env[CACHE_ENV] ? resolve(process.env[CACHE_ENV]!) : join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'moe-forge');
}

export interface MergeOptions {
  recipeFile: string;
  outPath: string;
  /** Relative model paths resolve against this (the CLI: the working directory; Nx: the recipe's folder). */
  modelBaseDir: string;
  seed?: number;
  layout?: 'classic' | 'fused';
  maxShardBytes?: number;
  /** 'grouped' (default): routers, base and each expert in shards of their own; 'reference': the reference's split. */
  shardOrder?: ShardOrder;
  allowIdenticalModels?: boolean;
  copyTokenizer?: boolean;
  /** Write mergekit_moe_config.yml (the reference's --write-model-card). */
  writeRecipe?: boolean;
  overwrite?: boolean;
  device?: string;
  /** Prompt-state cache (default $MOE_FORGE_CACHE, else ~/.cache/moe-forge). */
  cacheDir?: string;
  /** Hugging Face settings (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE); default process.env. */
  env?: Record<string, string | undefined>;
  log?: (line: string) => void;
  warn?: (line: string) => void;
}

export const DEFAULT_SHARD_BYTES = 5_000_000_000;

/** The whole pipeline in one process, the stages' outputs in a temporary work folder. */
export async function mergeRecipe(opts: MergeOptions): Promise<WriteResult> {
  const parsed = await readRecipe(opts.recipeFile);
  const work = await mkdtemp(join(tmpdir(), 'moe-forge-'));
  try {
    const cacheDir = opts.cacheDir ?? userCacheDir();
    const { merge } = await runFetch(parsed, join(work, 'fetch'), { cacheDir, env: opts.env, modelBaseDir: opts.modelBaseDir, allowIdenticalModels: opts.allowIdenticalModels, layout: opts.layout, seed: opts.seed, log: opts.log });
    await runEmbedPrompts(merge, join(work, 'embed-prompts'), { cacheDir, device: opts.device, log: opts.log, progress: progressReporter('prompt states') });
    await runBuildGates(merge, join(work, 'embed-prompts'), join(work, 'build-gates'));
    const { gates, warnings } = await gatesForAssembly(merge, join(work, 'build-gates'));
    const plan = await runAssemble(merge, join(work, 'assemble-experts'), { maxShardBytes: opts.maxShardBytes ?? DEFAULT_SHARD_BYTES, shardOrder: opts.shardOrder, extraWarnings: warnings, gates });
    for (const w of plan.warnings) opts.warn?.(w);
    return await runWrite(plan, {
      outPath: opts.outPath,
      gates,
      recipeText: parsed.text,
      tokenizerDir: merge.ctx.base.dir,
      copyTokenizer: opts.copyTokenizer ?? true,
      writeRecipe: opts.writeRecipe ?? true,
      overwrite: opts.overwrite ?? false,
      log: opts.log,
      progress: progressReporter('writing'),
    });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
