import type { GgufOutType } from '../gguf';
import { progressReporter } from '../util';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { isOurWorkFolder, makeTempWorkFolder } from '../util';
import { inUse } from '../util';
import { leftByDeadProcess } from '../util';
import { readRecipe, type ParsedRecipe } from '../recipe';
import type { WriteResult } from '../stages';
import { changedOutputFiles, recordOutputFiles } from '../output-folder';
import { loadMergeContext, readModelsFile, type MergeContext, type ResolvedModel } from '../stages';
import type { PathRoots } from '../resolve';
import { userCacheDir } from '../cache';
export { userCacheDir };
import type { ShardOrder } from '../plan';
import type { ForwardPrecision } from '../forward';
import type { RngKind } from '../architectures';
import { readReport, writeWhole } from '../stages';
import { hubSettings } from '../resolve';
import { ForgeError } from '../errors';
import { DEFAULT_SHARD_BYTES } from '../options';
import type { StageEnv } from './env';
import { runPipeline } from './schedule';

/** The command line has no workspace: its cache lives with the user's other caches. */

export interface MergeOptions {
  recipeFile: string;
  outPath: string;
  /** Relative model paths resolve against this (the CLI: the working directory; Nx: the recipe's folder). */
  modelBaseDir: string;
  seed?: number;
  layout?: 'classic' | 'fused';
  /** `torch`: random routers and noise as the reference draws them (PyTorch's CPU generator). */
  rng?: RngKind;
  maxShardBytes?: number;
  /** 'grouped' (default): routers, base and each expert in shards of their own; 'reference': the reference's split. */
  shardOrder?: ShardOrder;
  allowIdenticalModels?: boolean;
  copyTokenizer?: boolean;
  /** Also write OUT/model-TYPE.gguf; `ggufOnly`: instead of the safetensors shards. */
  gguf?: GgufOutType;
  ggufOnly?: boolean;
  /** Write mergekit_moe_config.yml (the reference's --write-model-card). */
  writeRecipe?: boolean;
  overwrite?: boolean;
  /** Reuse nothing: prompt states and content ids computed again, every output file written again. */
  recompute?: boolean;
  device?: string;
  /** Forward-pass arithmetic for hidden-state gates: fp32 (default, exact) or int8. */
  forwardPrecision?: ForwardPrecision;
  /** Prompt-state cache (default $MOE_FORGE_CACHE, else ~/.cache/moe-forge). */
  cacheDir?: string;
  /** Hugging Face settings (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE); default process.env. */
  env?: Record<string, string | undefined>;
  log?: (line: string) => void;
  /** -vv: inputs, the chosen architecture and why, prompt-state cache hits, per-shard decisions. */
  debug?: (line: string) => void;
  warn?: (line: string) => void;
  /** Write the routing report: `file` ends in .html or .json, the other file goes beside it. */
  report?: { file: string; evalPrompts?: string };
}

export { DEFAULT_SHARD_BYTES };

/** The whole pipeline in one process (runPipeline, writing ahead), the stages' folders in a temporary work folder. */
/** A merge's result, and the model folders it read (for the command's no-op memo). */
export type MergeResult = WriteResult & { models: { dir: string; local: boolean }[] };

export async function mergeRecipe(opts: MergeOptions): Promise<MergeResult> {
  const parsed = await readRecipe(opts.recipeFile);
  await removeDeadWorkFolders();
  const { dir: work, forget } = await makeTempWorkFolder(join(tmpdir(), `moe-forge-${process.pid}-`));
  try {
    const cacheDir = opts.cacheDir ?? userCacheDir();
    const reportFiles = opts.report ? reportPaths(opts.report.file) : null;
    const env = commandEnv(opts, parsed, work, cacheDir, reportFiles);
    const result = await runPipeline(env, { writeAhead: true, skip: opts.report ? [] : ['report'] });
    const routing = await readReport(env.paths.stage('report'));
    // After the model: a failed merge leaves no report that looks like the merge's.
    if (routing && reportFiles) {
      await mkdir(dirname(reportFiles.html), { recursive: true });
      await writeWhole(reportFiles.json, JSON.stringify(routing.report) + '\n');
      await writeWhole(reportFiles.html, routing.html);
      opts.log?.(`routing report: ${reportFiles.html}`);
    }
    const models = (await env.models()).map((m) => ({ dir: m.dir, local: m.source === 'local' }));
    return { ...result, models };
  } finally {
    forget();
    await rm(work, { recursive: true, force: true });
  }
}

/** The command's environment for the pipeline: its flags, the work folder, its log, the cache's record of the output. */
function commandEnv(opts: MergeOptions, parsed: ParsedRecipe, work: string, cacheDir: string, reportFiles: { html: string; json: string } | null): StageEnv {
  const roots: PathRoots = { workspace: opts.modelBaseDir, hubCache: hubSettings({ env: opts.env }).cacheDir };
  const stats = opts.debug ?? opts.log ?? (() => undefined);
  let models: ResolvedModel[] | undefined;
  let merge: MergeContext | undefined;
  const env: StageEnv = {
    name: basename(opts.recipeFile).replace(/\.ya?ml$/, ''),
    hubEnv: opts.env,
    options: {
      randomSeed: opts.seed ?? 0,
      layout: opts.layout ?? 'classic',
      rng: opts.rng ?? 'stream',
      shardOrder: opts.shardOrder ?? 'grouped',
      device: opts.device ?? 'cpu',
      forwardPrecision: opts.forwardPrecision ?? 'fp32',
      overwrite: opts.overwrite ?? false,
      recompute: opts.recompute ?? false,
      allowIdenticalModels: opts.allowIdenticalModels ?? false,
      copyTokenizer: opts.copyTokenizer ?? true,
      gguf: opts.gguf,
      ggufOnly: opts.ggufOnly ?? false,
      writeRecipe: opts.writeRecipe ?? true,
      evalPrompts: opts.report?.evalPrompts,
    },
    paths: {
      roots,
      projectRoot: opts.modelBaseDir,
      recipe: opts.recipeFile,
      stage: (s) => join(work, s),
      output: opts.outPath,
      maxShardBytes: opts.maxShardBytes ?? DEFAULT_SHARD_BYTES,
      cacheDir,
      otherWrites: reportFiles ? [{ path: reportFiles.html, label: '--report' }, { path: reportFiles.json, label: '--report' }] : undefined,
    },
    log: {
      info: (l) => opts.log?.(l),
      warn: (l) => opts.warn?.(l),
      debug: (l) => opts.debug?.(l),
      stats,
      result: (l) => opts.debug?.(l),
    },
    progress: (label) => progressReporter(label),
    async models() {
      models ??= (await readModelsFile(join(work, 'fetch', 'models.json'), roots)).models;
      return models;
    },
    // One context for the run: the recipe and the models do not change under it.
    async merge() {
      if (!merge) {
        merge = await loadMergeContext(parsed, await env.models(), { modelBaseDir: opts.modelBaseDir, allowIdenticalModels: opts.allowIdenticalModels, layout: opts.layout, seed: opts.seed, rng: opts.rng });
        opts.debug?.(`architecture ${merge.arch.name}: ${merge.archWhy}`);
      }
      return merge;
    },
    outputState: {
      // Files of the folder changed since a merge with this cache wrote them (re-dated edits included).
      suspect: () => changedOutputFiles(cacheDir, opts.outPath),
      record: (files) => recordOutputFiles(cacheDir, opts.outPath, files),
    },
  };
  return env;
}

/**
 * Work folders of runs killed by SIGKILL (their pid is gone); other signals and crashes remove their own. Only a
 * folder holding our marker for that name and pid is removed: a user's folder named like ours is not.
 */
export async function removeDeadWorkFolders(dir = tmpdir()): Promise<void> {
  const entries = await readdir(dir).catch(() => [] as string[]);
  for (const e of entries) {
    const m = /^moe-forge-(\d+)-[A-Za-z0-9]{6}$/.exec(e);
    const p = join(dir, e);
    if (m && isOurWorkFolder(p, Number(m[1])) && leftByDeadProcess(Number(m[1]), p, inUse)) await rm(p, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** `--report FILE`: FILE ends in .html or .json; the other file is written beside it with the same stem. */
export function reportPaths(file: string): { html: string; json: string } {
  const m = /^(.*)\.(html?|json)$/i.exec(file);
  if (!m) throw new ForgeError('bad_flag', `--report needs a file name ending in .html or .json (the other is written beside it), got "${file}"`, { field: '--report' });
  return { html: /^html?$/i.test(m[2]!) ? file : `${m[1]}.html`, json: m[2]!.toLowerCase() === 'json' ? file : `${m[1]}.json` };
}
