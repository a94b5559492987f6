import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { ForgeError, ModelError } from '../errors';
import type { ForwardOptions, ForwardProgress, LayerState } from './run';
import { adoptEarlyWorker, dropEarlyWorker, forkWorker, workerAlive as alive } from '../fork';

/**
 * The forward pass in a child process: onnxruntime's native memory goes back to the OS when it exits, and
 * a native crash becomes an error for this merge instead of killing the build.
 */
// Set by scripts/build.mjs: the built worker, relative to the bundle that forks it; unset when run from sources.
declare const __FORWARD_WORKER__: string | undefined;
const WORKER = join(__dirname, typeof __FORWARD_WORKER__ === 'string' ? __FORWARD_WORKER__ : 'worker-main.ts');

function runIsolated<T>(request: Record<string, unknown>, onProgress?: (p: ForwardProgress) => void): Promise<T> {
  return runIsolatedWorker(WORKER, request, onProgress);
}

/**
 * A forward worker forked before its request (startForwardWorker): it boots and loads onnxruntime while this
 * process reads the recipe and the prompts (a core that is idle then), and sets up the pass once told the model
 * (prepareForwardWorker). The next isolated forward pass takes it; stopForwardWorker ends it unused.
 */
let spare: ChildProcess | null = null;
let stopAtExit = false;


/** Forks the forward worker now, for the next forward pass of this process (a no-op when one waits already). */
export function startForwardWorker(): void {
  if (spare && alive(spare)) return;
  // The one the command forked at its start (fork-worker.ts), else a new one.
  spare = adoptEarlyWorker(WORKER) ?? forkWorker(WORKER);
  spare.on('error', () => undefined); // a failed spare is passed over (alive() is false) and the pass forks anew
  if (!stopAtExit) {
    stopAtExit = true;
    process.once('exit', stopForwardWorker);
  }
}

export type ForwardJob = 'prompts' | 'router' | 'pad';

/**
 * Tells the waiting worker (if one was started) which pass comes: it opens and checks the model, reads the first
 * layer and makes its session. A request for another model or other options runs as if unprepared.
 */
export function prepareForwardWorker(job: ForwardJob, modelDir: string, options: Omit<Opts, 'onProgress'>): void {
  if (spare && alive(spare)) spare.send({ kind: 'prepare', job, modelDir, options }, () => undefined);
}

/** The waiting worker's process id (null when none waits). */
export function waitingForwardWorker(): number | null {
  return spare && alive(spare) ? spare.pid ?? null : null;
}

/** Ends the waiting worker, if any (nothing to compute after all), and one forked at the command's start. */
export function stopForwardWorker(): void {
  dropEarlyWorker();
  const s = spare;
  spare = null;
  if (s && s.exitCode === null && s.signalCode === null) s.kill();
}

/** The waiting worker when it serves `worker` and still lives, once. */
function takeSpare(worker: string): ChildProcess | null {
  const s = spare;
  if (worker !== WORKER || !s) return null;
  spare = null;
  if (alive(s)) return s;
  s.kill();
  return null;
}

/** `request` served by the worker script `worker` (one that calls serveOneRequest) in a child process. */
export function runIsolatedWorker<T>(worker: string, request: Record<string, unknown>, onProgress?: (p: ForwardProgress) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = takeSpare(worker) ?? forkWorker(worker);
    let settled = false;
    const done = (fn: () => void) => {
      if (!settled) {
        settled = true;
        fn();
      }
    };
    // Settled once the child has exited and its output is read: none of it can land after the caller moved on.
    let outcome: (() => void) | null = null;
    child.on('message', (m: { kind: string; progress?: ForwardProgress; result?: T; error?: { message: string; code?: string; place?: object; name: string } }) => {
      if (m.kind === 'progress') onProgress?.(m.progress!);
      else if (m.kind === 'result') outcome ??= () => resolve(m.result as T);
      else if (m.kind === 'error') {
        const e = m.error!;
        // Forge errors keep their message (which already names file and tensor); others stay internal errors.
        outcome ??= () => reject(e.name === 'ForgeError' || e.code ? Object.assign(new ForgeError(e.code ?? 'forward_failed', ''), { message: e.message }) : new Error(e.message));
      }
    });
    child.on('error', (e) => done(() => reject(e)));
    child.on('close', (code, signal) => {
      done(outcome ?? (() => reject(new ModelError('forward_crashed', `the forward pass process ended without a result (${signal ? `signal ${signal}` : `exit code ${code}`}); this is a crash in onnxruntime or out of memory`))));
    });
    child.send(request);
  });
}

type Opts = Omit<ForwardOptions, 'onProgress'> & { onProgress?: (p: ForwardProgress) => void };

export function computePromptStatesIsolated(modelDir: string, prompts: number[][], opts: Opts = {}): Promise<LayerState[][]> {
  const { onProgress, ...options } = opts;
  return runIsolated({ kind: 'prompts', modelDir, prompts, options }, onProgress);
}

export function computePadStatesIsolated(modelDir: string, padTokenId: number, opts: Opts = {}): Promise<Float32Array[]> {
  const { onProgress, ...options } = opts;
  return runIsolated({ kind: 'pad', modelDir, padTokenId, options }, onProgress);
}

export function computeRouterInputsIsolated(modelDir: string, prompts: number[][], opts: Opts = {}): Promise<Float32Array[][]> {
  const { onProgress, ...options } = opts;
  return runIsolated({ kind: 'router', modelDir, prompts, options }, onProgress);
}
