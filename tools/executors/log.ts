import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Progress } from '../../libs/util';

/**
 * What an executor prints, in two kinds. Nx stores a task's terminal output with its cache entry and prints it
 * again on every hit, so:
 * - **results** (`info`, `warn`, `error`): what the stage's outputs say, true whenever Nx restores them (the same
 *   inputs gave the same outputs). They go to stdout and stderr, cached with the task.
 * - **this run only** (`run`, `debug`, progress): why the stage ran, timings, progress, `--verbose` details. They
 *   never reach the task's output; they are kept in a note (saveNotes, below) that the build target, which Nx never
 *   caches, prints under its own header for the stages that ran in this invocation.
 * @nx/devkit's logger costs ~0.2 s to load in every task process, most of a no-op stage's time: plain console.
 */
export const verbose = () => process.env.NX_VERBOSE_LOGGING === 'true' || process.env.MOE_FORGE_DEBUG === '1';

/**
 * Nx streams the output of tasks that run in parallel as it comes, each line prefixed (if at all) with the project
 * alone, so a line lands under whichever task's header came last: each result line names its stage. The same in
 * every output style, so that a cache entry replays the same text whichever style filled it.
 */
let stageTag = '';
const tagged = (s: string) => (stageTag ? s.split('\n').map((l) => `[${stageTag}] ${l}`).join('\n') : s);

let notes: string[] = [];

export const logger = {
  info: (s: string) => console.log(tagged(s)),
  warn: (s: string) => console.warn(tagged(s)),
  error: (s: string) => console.error(tagged(s)),
  /** True of this run only: kept for the build target's summary, never in the task's cached output. */
  run: (s: string) => {
    notes.push(s);
  },
  debug: (s: string) => {
    if (verbose()) notes.push(`debug: ${s}`);
  },
};

/** Starts a task's log: its lines are tagged with `stage` where Nx interleaves them, its notes start empty. */
export function beginTask(stage: string): void {
  stageTag = stage;
  notes = [];
}

/** The notes of the task begun last, taken (the next task starts empty). */
export function takeNotes(): string[] {
  const n = notes;
  notes = [];
  return n;
}

/**
 * Progress of long work in a task. On a terminal a bar is redrawn in place and erased when the work ends, so
 * that what Nx stores ends blank; the last state, with its time, is a note of this run. Off a terminal nothing
 * is printed (each line would be replayed on every cache hit): the note says it at the end.
 */
export function taskProgress(label: string, stream: NodeJS.WriteStream = process.stderr): Progress {
  const tty = stream.isTTY === true && !process.env.CI;
  const started = Date.now();
  let drawn = false;
  let last = '';
  return {
    update(done, total, detail) {
      last = detail;
      if (!tty) return;
      const width = 24;
      const filled = total > 0 ? Math.round((done / total) * width) : 0;
      stream.write(`\r${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${detail}\x1b[K`);
      drawn = true;
    },
    end() {
      if (drawn) stream.write('\r\x1b[2K');
      if (last) logger.run(`${label}: ${last} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
      drawn = false;
      last = '';
    },
  };
}

/** Where the notes of `project`'s `target` are kept between the task and the build target. */
export const notesFile = (workspaceRoot: string, project: string, target: string) => join(workspaceRoot, '.nx', 'moe-forge', 'runs', project.replace(/[^\w.-]/g, '_'), `${target.replace(/[^\w.-]/g, '_')}.json`);

/**
 * The Nx command this task runs under: the pid of the Nx process that started it (Nx passes its ancestors' pids
 * down as NX_INVOCATION_ANCESTOR_PIDS, the nearest last), else the parent's.
 */
export function invocation(): string {
  const pids = (process.env.NX_INVOCATION_ANCESTOR_PIDS ?? '').split(',').filter((p) => /^\d+$/.test(p));
  return pids.at(-1) ?? String(process.ppid);
}

export interface TaskNotes {
  v: 1;
  invocation: string;
  stage: string;
  success: boolean;
  lines: string[];
}

/** Keeps the notes of a task that ran (an empty list included: it says the stage ran). Never fails the task. */
export function saveNotes(workspaceRoot: string, project: string, target: string, stage: string, success: boolean): void {
  const file = notesFile(workspaceRoot, project, target);
  const record: TaskNotes = { v: 1, invocation: invocation(), stage, success, lines: takeNotes() };
  try {
    mkdirSync(join(file, '..'), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(record) + '\n');
    renameSync(tmp, file);
  } catch {
    // no note: the build target says the stage ran without details
  }
}
