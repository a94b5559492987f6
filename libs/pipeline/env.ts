import type { MergeContext, ResolvedModel } from '../stages';
import type { PathRoots } from '../resolve';
import type { Progress } from '../util';
import type { StageOptions } from '../options';

/**
 * The options a stage may use: the options table's (libs/options/table.ts), typed and defaulted by it, as the Nx
 * executors parse them or the command and the library map them (`evalPrompts` resolved against the recipe's
 * folder); and the command's own `writeRecipe` (mergekit_moe_config.yml and the model card, default true).
 */
export type PipelineOptions = StageOptions & { writeRecipe?: boolean };

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
  outputState: { suspect(): string[]; record(files: string[], replaced: boolean, probe?: boolean): void };
  /** The options given on the command line (Nx: those other than the target's configuration), for the recipe stage to hand on. */
  overrides?: Record<string, unknown>;
  /** A file an option names must be one the front end's cache key covers (Nx: checkHashedInput); default: nothing to check. */
  checkInput?(file: string, option: 'evalPrompts'): void;
}
