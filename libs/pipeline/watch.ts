/**
 * Watching a recipe (`mergekit-moe CONFIG OUT --watch`, Nx's `watch` target): build, then build again each time one
 * of the input files is saved, until stopped. What makes a watched edit quicker than a new command is what the
 * process keeps: its code loaded, and, between builds, a forward worker booted with the base model's pass set up
 * (`prepareNextMerge`), so a new prompt's states start at once.
 */
import { statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { GATE_MODES } from '../gates';
import { readRecipe } from '../recipe';
import { cachedModelDir } from '../resolve';
import { prepareForwardWorker, startForwardWorker, stopForwardWorker } from '../forward';
import type { StageOptions } from '../options';

/**
 * A recipe's watch (both front ends): `build` on each save of the recipe and `also` (watchBuilds), the forward
 * worker prepared for the recipe's base between builds (prepareNextMerge) and ended with the watch.
 */
export async function watchRecipe(recipeFile: string, modelBaseDir: string, options: Pick<StageOptions, 'device' | 'forwardPrecision'>, build: () => Promise<void>, o: Omit<WatchOptions, 'prepare'> & { also?: string[] }): Promise<void> {
  try {
    await watchBuilds([recipeFile, ...(o.also ?? [])], build, { ...o, prepare: () => void prepareNextMerge(recipeFile, modelBaseDir, options) });
  } finally {
    stopForwardWorker();
  }
}

/**
 * Between builds: fork the forward worker when the recipe's gate mode needs prompt states, and set it up for the
 * base model's pass (the one the embed-prompts stage asks for) where the base is a local folder or complete in the
 * Hugging Face cache and the pass runs on the CPU (in the arithmetic the build asks for), its other layers read
 * into the OS's page cache until the next build asks for it. A recipe that does not read prepares nothing: the
 * next build says what is wrong.
 */
export async function prepareNextMerge(recipeFile: string, modelBaseDir: string, options: Pick<StageOptions, 'device' | 'forwardPrecision'>): Promise<void> {
  try {
    const { recipe } = await readRecipe(recipeFile);
    const states = GATE_MODES[recipe.gate_mode].states;
    if (states !== 'hidden' && states !== 'router_input') return;
    startForwardWorker();
    if (states !== 'hidden' || (options.device ?? 'cpu') !== 'cpu') return;
    // A local folder, or a complete snapshot in the Hugging Face cache (this process's environment names it).
    const dir = await cachedModelDir(recipe.base_model, { baseDir: modelBaseDir });
    // Warmed: between builds other programs' reads, or a large write of the output, may push the base out of the OS's cache.
    if (dir !== null) prepareForwardWorker('prompts', dir, { device: 'cpu', precision: options.forwardPrecision ?? 'fp32' }, true);
  } catch {
    // only a head start
  }
}

export interface WatchOptions {
  /** Called once no build runs, after each build: set up what the next one needs (the forward worker). */
  prepare?: () => void;
  /** A line for the user (stderr). */
  say: (line: string) => void;
  /** Ends the watch once no build runs (the command's Ctrl-C ends the process instead). */
  signal?: AbortSignal;
  /** Quiet time after a change event before building: an editor's save is often several writes. */
  settleMs?: number;
  /** The backstop poll, for file systems that report no events (network mounts). */
  pollMs?: number;
}

/** What changes when a file is saved, in place (size, mtime) or by rename (another inode); 'missing' if absent. */
function fileState(file: string): string {
  try {
    const s = statSync(file);
    return `${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return 'missing';
  }
}

/**
 * Runs `build`, then again each time one of `files` changes (one build at a time: changes seen during a build make
 * one more after it). Resolves when `signal` aborts. `build` reports its own result and errors; one that throws
 * is reported here and the watch goes on.
 */
export async function watchBuilds(files: string[], build: () => Promise<void>, o: WatchOptions): Promise<void> {
  const paths = files.map((f) => resolve(f));
  const names = new Set(paths.map((p) => basename(p)));
  let states = paths.map(fileState);
  let building = false;
  let again = false;
  let timer: NodeJS.Timeout | undefined;
  let finish: () => void = () => undefined;
  const ended = new Promise<void>((r) => (finish = r));

  const runBuild = async () => {
    building = true;
    try {
      await build();
    } catch (e) {
      o.say(`error: ${String((e as Error)?.message ?? e).split('\n')[0]}`);
    } finally {
      building = false;
    }
    if (o.signal?.aborted) return finish();
    // Saved again while it built: build again now (the file may also be back as it was: then nothing to do).
    if (again) {
      again = false;
      if (await check()) return;
    }
    o.prepare?.();
  };
  // A build when a file's state differs from the one the last build started with; whether one started.
  const check = async (): Promise<boolean> => {
    const now = paths.map(fileState);
    const changed = paths.filter((_, i) => now[i] !== states[i]).map((p) => basename(p));
    if (changed.length === 0) return false;
    if (building) {
      again = true;
      return false;
    }
    states = now;
    o.say(`changed: ${changed.join(', ')}; building`);
    await runBuild();
    return true;
  };
  const soon = () => {
    clearTimeout(timer);
    timer = setTimeout(() => void check(), o.settleMs ?? 30);
  };

  // The folders are watched, not the files: an editor that saves by writing a new file and renaming it over the
  // old one replaces the inode a file watch would follow.
  const watchers: FSWatcher[] = [];
  for (const dir of new Set(paths.map((p) => dirname(p)))) {
    try {
      const w = watch(dir, { persistent: true }, (_event, name) => {
        if (name === null || names.has(String(name))) soon();
      });
      w.on('error', () => undefined); // the poll below still sees changes
      watchers.push(w);
    } catch {
      // no file events here (inotify watches used up, an unsupported file system): the poll alone
    }
  }
  const poll = setInterval(() => void check(), o.pollMs ?? 1000);

  const stop = () => {
    for (const w of watchers) w.close();
    clearInterval(poll);
    clearTimeout(timer);
    if (!building) finish();
  };
  if (o.signal?.aborted) stop();
  else o.signal?.addEventListener('abort', stop, { once: true });

  await runBuild();
  if (!o.signal?.aborted) o.say(`watching ${paths.map((p) => basename(p)).join(', ')} for changes (Ctrl-C to stop)`);
  await ended;
}
