import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { ForgeError, ModelError } from '../errors';
import { passKey, type ForwardOptions, type ForwardProgress, type LayerState } from './run';
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
 * layer and makes its session. A request for another model or other options runs as if unprepared. `warm`: then,
 * until the request comes, it reads the other layers' files into the OS's page cache (for a worker that may wait
 * long: a watched recipe's, between builds).
 */
export function prepareForwardWorker(job: ForwardJob, modelDir: string, options: Omit<Opts, 'onProgress'>, warm = false): void {
  if (!spare || !alive(spare)) return;
  spare.send({ kind: 'prepare', job, modelDir, options, ...(warm ? { warm } : {}) }, () => undefined);
  prepareStats.sent++;
  prepareStats.lastModel = modelDir;
  prepareStats.lastPrecision = options.precision ?? 'fp32';
}

/** Preparations sent to a waiting worker, and the model folder and arithmetic of the last (tests read this). */
export const prepareStats: { sent: number; lastModel: string | null; lastPrecision: string | null } = { sent: 0, lastModel: null, lastPrecision: null };

/** The waiting worker's process id (null when none waits). */
export function waitingForwardWorker(): number | null {
  return spare && alive(spare) ? spare.pid ?? null : null;
}

/** Ends the waiting worker, if any (nothing to compute after all), a speculated pass nobody took, and one forked at the command's start. */
export function stopForwardWorker(): void {
  dropEarlyWorker();
  cancelSpeculation();
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
  return launch<T>(worker, request, onProgress).result;
}

/** The request sent to a child (the waiting worker when it serves `worker`), and the child, which ending cancels it. */
function launch<T>(worker: string, request: Record<string, unknown>, onProgress?: (p: ForwardProgress) => void): { child: ChildProcess; result: Promise<T> } {
  const child = takeSpare(worker) ?? forkWorker(worker);
  const result = new Promise<T>((resolve, reject) => {
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
  return { child, result };
}

/**
 * A prompt-state pass sent to the waiting worker before its stage asks for it (speculatePromptStates): the
 * prompts a run is expected to miss in the cache, computed while this process still hashes the models and reads
 * the cache. The stage's pass takes it when it covers the stage's prompts (computePromptStatesIsolated).
 */
interface Speculation {
  /** The pass (passKey): model and options. */
  key: string;
  /** Index of each speculated prompt by its ids. */
  index: Map<string, number>;
  tokens: number;
  child: ChildProcess;
  result: Promise<LayerState[][]>;
  /** The last progress seen, and where later ones go once a pass takes it. */
  last: ForwardProgress | null;
  listener: ((p: ForwardProgress) => void) | null;
}
let speculation: Speculation | null = null;

/** Speculated passes in this process: sent, taken by a stage's pass, ended unused (tests read this). */
export const speculationStats = { sent: 0, taken: 0, ended: 0, lastPrompts: 0 };

const idsKey = (ids: number[]) => ids.join(',');

/**
 * Sends `prompts` to the waiting worker now (none waiting: nothing happens, false). A later
 * computePromptStatesIsolated for the same model and options whose prompts are among these takes its result;
 * one that is not ends it, as stopForwardWorker does.
 */
export function speculatePromptStates(modelDir: string, prompts: number[][], options: Omit<Opts, 'onProgress'>): boolean {
  if (!spare || !alive(spare) || prompts.length === 0) return false;
  cancelSpeculation();
  const s: Speculation = { key: passKey(modelDir, options), index: new Map(prompts.map((p, i) => [idsKey(p), i])), tokens: prompts.reduce((a, p) => a + p.length, 0), child: spare, result: Promise.resolve([]), last: null, listener: null };
  const { result } = launch<LayerState[][]>(WORKER, { kind: 'prompts', modelDir, prompts, options }, (p) => {
    s.last = p;
    s.listener?.(p);
  });
  s.result = result;
  result.catch(() => undefined); // a pass that takes it sees its error; one ended unused has none to report
  speculation = s;
  speculationStats.sent++;
  speculationStats.lastPrompts = prompts.length;
  return true;
}

/** The speculated pass, for a pass over `prompts` it covers and is worth waiting for (else it is ended): its row of each prompt. */
function takeSpeculation(modelDir: string, prompts: number[][], options: Omit<Opts, 'onProgress'>): { s: Speculation; rows: number[] } | null {
  const s = speculation;
  if (!s) return null;
  speculation = null;
  const rows = prompts.map((p) => s.index.get(idsKey(p)) ?? -1);
  const covered = s.key === passKey(modelDir, options) && rows.every((r) => r >= 0);
  // Waiting for prompts nobody needs costs more than a fresh pass over the few that are needed once less than half
  // of its tokens count and less than half of it is done.
  const needed = prompts.reduce((a, p) => a + p.length, 0);
  const half = s.last !== null && (s.last.layer + 1) * 2 >= s.last.layers;
  if (covered && (needed * 2 >= s.tokens || half)) {
    speculationStats.taken++;
    return { s, rows };
  }
  end(s);
  return null;
}

/** Ends a speculated pass nobody took. */
function cancelSpeculation(): void {
  const s = speculation;
  speculation = null;
  if (s) end(s);
}

function end(s: Speculation): void {
  speculationStats.ended++;
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill();
}

/** The speculated pass in flight (tests): its process id, or null. */
export function speculatedForwardWorker(): number | null {
  return speculation && speculation.child.exitCode === null ? speculation.child.pid ?? null : null;
}

type Opts = Omit<ForwardOptions, 'onProgress'> & { onProgress?: (p: ForwardProgress) => void };

export async function computePromptStatesIsolated(modelDir: string, prompts: number[][], opts: Opts = {}): Promise<LayerState[][]> {
  const { onProgress, ...options } = opts;
  const taken = takeSpeculation(modelDir, prompts, options);
  if (!taken) return runIsolated({ kind: 'prompts', modelDir, prompts, options }, onProgress);
  const { s, rows } = taken;
  s.listener = onProgress ?? null;
  if (s.last) onProgress?.(s.last);
  const all = await s.result;
  return rows.map((r) => all[r]!);
}

export function computePadStatesIsolated(modelDir: string, padTokenId: number, opts: Opts = {}): Promise<Float32Array[]> {
  const { onProgress, ...options } = opts;
  return runIsolated({ kind: 'pad', modelDir, padTokenId, options }, onProgress);
}

export function computeRouterInputsIsolated(modelDir: string, prompts: number[][], opts: Opts = {}): Promise<Float32Array[][]> {
  const { onProgress, ...options } = opts;
  return runIsolated({ kind: 'router', modelDir, prompts, options }, onProgress);
}
