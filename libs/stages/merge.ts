import { mkdir, readdir, rm } from 'node:fs/promises';
import { isOurWorkFolder, makeTempWorkFolder } from '../util/work-folder';
import { inUse } from '../util/cleanup';
import { leftByDeadProcess } from '../util/process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readRecipe } from '../recipe/parse';
import { runFetch } from './fetch';
import { runEmbedPrompts } from './embed-prompts';
import { gatesForAssembly, runBuildGates } from './build-gates';
import { runAssemble } from './assemble';
import type { GgufOutType } from '../gguf';
import { STAMP_FILE, writeOutput, type LateInputs, type WriteResult } from './write';
import { changedOutputFiles, recordOutputFiles } from './output-record';
import { progressReporter } from '../util/progress';
import { CACHE_ENV } from '../cache';
import type { ShardOrder } from '../plan/types';
import { homedir } from 'node:os';
import type { RngKind } from '../architectures/types';
import { basename, dirname, isAbsolute, resolve } from 'node:path';
import { readEvalPrompts, runReport, writeWhole } from './report';
import { ForgeError } from '../errors';

/** The command line has no workspace: its cache lives with the user's other caches. */
export function userCacheDir(): string {
  if (process.env[CACHE_ENV]) return resolve(process.env[CACHE_ENV]!);
  // As the XDG spec says: an empty or relative XDG_CACHE_HOME is ignored (never a cache in the working directory).
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.cache'), 'moe-forge');
}

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
  /** Write mergekit_moe_config.yml (the reference's --write-model-card). */
  writeRecipe?: boolean;
  overwrite?: boolean;
  /** Reuse nothing: prompt states and content ids computed again, every output file written again. */
  recompute?: boolean;
  /** Also write OUT/model-TYPE.gguf; `ggufOnly`: instead of the safetensors shards. */
  gguf?: GgufOutType;
  ggufOnly?: boolean;
  device?: string;
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

export const DEFAULT_SHARD_BYTES = 5_000_000_000;

/** The whole pipeline in one process, the stages' outputs in a temporary work folder. */
export async function mergeRecipe(opts: MergeOptions): Promise<WriteResult> {
  const parsed = await readRecipe(opts.recipeFile);
  await removeDeadWorkFolders();
  const { dir: work, forget } = await makeTempWorkFolder(join(tmpdir(), `moe-forge-${process.pid}-`));
  try {
    const cacheDir = opts.cacheDir ?? userCacheDir();
    const reportFiles = opts.report ? reportPaths(opts.report.file) : null;
    const { merge } = await runFetch(parsed, join(work, 'fetch'), { cacheDir, recompute: opts.recompute, env: opts.env, modelBaseDir: opts.modelBaseDir, allowIdenticalModels: opts.allowIdenticalModels, layout: opts.layout, seed: opts.seed, rng: opts.rng, log: opts.log, warn: opts.warn, stats: opts.debug ?? opts.log, debug: opts.debug, output: { path: opts.outPath, recipeFile: opts.recipeFile, evalPrompts: opts.report?.evalPrompts, reports: reportFiles ? [{ path: reportFiles.html, label: '--report' }, { path: reportFiles.json, label: '--report' }] : undefined, overwrite: opts.overwrite } });
    opts.debug?.(`architecture ${merge.arch.name}: ${merge.archWhy}`);
    // Held-out prompts are checked before the forward pass, not after it.
    if (opts.report?.evalPrompts) await readEvalPrompts(opts.report.evalPrompts, merge.ctx.experts.length);
    // The routers need the forward pass; the base's and experts' tensors do not: their shards are written
    // meanwhile from a plan made now (the final plan differs only in the routers' warnings).
    const early = await runAssemble(merge, join(work, 'assemble-early'), { maxShardBytes: opts.maxShardBytes ?? DEFAULT_SHARD_BYTES, shardOrder: opts.shardOrder });
    const late = (async (): Promise<LateInputs & { routingReport: Awaited<ReturnType<typeof runReport>> | null }> => {
      await runEmbedPrompts(merge, join(work, 'embed-prompts'), { cacheDir, recompute: opts.recompute, device: opts.device, log: opts.log, warn: opts.warn, debug: opts.debug, progress: progressReporter('prompt states') });
      await runBuildGates(merge, join(work, 'embed-prompts'), join(work, 'build-gates'));
      const { gates, warnings } = await gatesForAssembly(merge, join(work, 'build-gates'));
      const plan = await runAssemble(merge, join(work, 'assemble-experts'), { maxShardBytes: opts.maxShardBytes ?? DEFAULT_SHARD_BYTES, shardOrder: opts.shardOrder, extraWarnings: warnings, gates });
      // After the plan: the report runs the merged model it describes.
      const routing = opts.report ? await runReport(merge, join(work, 'embed-prompts'), join(work, 'build-gates'), join(work, 'assemble-experts'), join(work, 'report'), { name: basename(opts.recipeFile).replace(/\.ya?ml$/, ''), cacheDir, recompute: opts.recompute, device: opts.device, evalPrompts: opts.report.evalPrompts, log: opts.log, warn: opts.warn, progress: progressReporter('report') }) : null;
      for (const w of plan.warnings) opts.warn?.(w);
      return { plan, gates, routing: routing ?? undefined, routingReport: routing };
    })();
    let result: WriteResult;
    // Files of the folder changed since a merge with this cache wrote them (re-dated edits included).
    const suspect = changedOutputFiles(cacheDir, opts.outPath);
    if (suspect.length) opts.log?.(`changed since written: ${suspect.join(', ')}`);
    try {
      result = await writeOutput(early, late, {
        outPath: opts.outPath,
        recipeText: parsed.text,
        tokenizerDir: merge.ctx.base.dir,
        copyTokenizer: opts.copyTokenizer ?? true,
        writeRecipe: opts.writeRecipe ?? true,
        overwrite: opts.overwrite ?? false,
        recompute: opts.recompute,
        gguf: opts.gguf,
        ggufOnly: opts.ggufOnly,
        recipeFile: opts.recipeFile,
        evalPrompts: opts.report?.evalPrompts,
        cacheDir,
        log: opts.log,
        warn: opts.warn,
        debug: opts.debug,
        progress: progressReporter('writing'),
        suspect,
      });
    } catch (e) {
      // The write failed on its own: the forward pass finishes (its work folder is removed below) and, as
      // before the two ran together, its error is the one reported when both failed.
      const settled = await late.then(() => null, (le: unknown) => ({ le }));
      throw settled ? settled.le : e;
    }
    recordOutputFiles(cacheDir, opts.outPath, [...result.files, STAMP_FILE]);
    const routing = (await late).routingReport;
    // After the model: a failed merge leaves no report that looks like the merge's.
    if (routing && reportFiles) {
      await mkdir(dirname(reportFiles.html), { recursive: true });
      await writeWhole(reportFiles.json, JSON.stringify(routing.report) + '\n');
      await writeWhole(reportFiles.html, routing.html);
      opts.log?.(`routing report: ${reportFiles.html}`);
    }
    return result;
  } finally {
    forget();
    await rm(work, { recursive: true, force: true });
  }
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
