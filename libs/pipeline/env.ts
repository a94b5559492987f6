import type { GgufOutType } from '../gguf';
import type { Progress } from '../util';
import type { RngKind } from '../architectures';
import type { ShardOrder } from '../plan';
import type { ForwardPrecision } from '../forward';
import type { MergeContext, ResolvedModel } from '../stages';
import type { PathRoots } from '../resolve';

/** The options a stage may use: the Nx executors' options once parsed, or the command's flags. */
export interface PipelineOptions {
  randomSeed: number;
  layout: 'classic' | 'fused';
  rng: RngKind;
  shardOrder: ShardOrder;
  device: string;
  /** The forward pass's arithmetic for hidden-state gates (embed-prompts). */
  forwardPrecision: ForwardPrecision;
  overwrite: boolean;
  recompute: boolean;
  allowIdenticalModels: boolean;
  copyTokenizer: boolean;
  /** Also write OUT/model-TYPE.gguf; `ggufOnly`: instead of the safetensors shards. */
  gguf?: GgufOutType;
  ggufOnly?: boolean;
  /** Held-out prompts, resolved against the recipe's folder. */
  evalPrompts?: string;
  /** mergekit_moe_config.yml and the model card (default true). */
  writeRecipe?: boolean;
}

/** Where a stage's lines go. `stats` is what this run did (counts, timings): Nx replays a cached log, so it sends them to debug. */
export interface StageLog {
  info(line: string): void;
  warn(line: string): void;
  debug(line: string): void;
  stats(line: string): void;
  /** A stage's one-line summary: the task's output in Nx; the command prints its own summary, so these are debug there. */
  result(line: string): void;
}

export interface StagePathsLike {
  /** Where stage outputs' paths are relative to (see libs/resolve/portable.ts). */
  roots: PathRoots;
  /** Relative model paths resolve against this (Nx: the recipe's folder; the command: the working directory). */
  projectRoot: string;
  recipe: string;
  /** A stage's folder. */
  stage(name: string): string;
  output: string;
  maxShardBytes: number;
  /** Prompt-state and content-id cache. */
  cacheDir: string;
  /** Nx's stage outputs folder, which the output path must not be or hold (the command's work folder is its own). */
  stagesDir?: string;
  /** Other files the run writes (the command's --report files), checked against the output path before any work. */
  otherWrites?: { path: string; label: string }[];
}

/**
 * What a front end hands a stage's run function. The Nx executors and the `mergekit-moe` command each build one
 * (tools/executors/run-stage.ts, libs/pipeline/schedule.ts); the stages' options are put together from it once,
 * in the table.
 */
export interface StageEnv {
  /** The report's title: the Nx project, or the recipe's file name. */
  name: string;
  /** Hugging Face settings (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE); default process.env. */
  hubEnv?: Record<string, string | undefined>;
  options: PipelineOptions;
  paths: StagePathsLike;
  log: StageLog;
  /** Progress of long work (the command: a live line; Nx: a bar on a terminal, erased, its last state a note). */
  progress(label: string): Progress;
  /** The models as the fetch stage resolved them (not for fetch itself). */
  models(): Promise<ResolvedModel[]>;
  /** The recipe and models as the fetch stage resolved them (not for fetch itself). */
  merge(): Promise<MergeContext>;
  /** The output folder's files changed since this front end wrote them, and the record of a write. */
  outputState: { suspect(): string[]; record(files: string[], replaced: boolean): void };
  /** The options given on the command line (Nx: those other than the target's configuration), for the recipe stage to hand on. */
  overrides?: Record<string, unknown>;
  /** A file an option names must be one the front end's cache key covers (Nx: checkHashedInput); default: nothing to check. */
  checkInput?(file: string, option: 'evalPrompts'): void;
}
