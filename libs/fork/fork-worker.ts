import { fork, type ChildProcess } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { withHugeMalloc } from './huge-malloc';

/**
 * A forked worker's environment: ours, with onnxruntime's telemetry off and huge-page malloc, and without
 * NODE_EXTRA_CA_CERTS: a worker reads local files and opens no connection, and Node parses that certificate file
 * at every start (~40 ms of the worker's boot, on the path of every edit, where a proxy's certificates are set).
 */
export function workerEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { NODE_EXTRA_CA_CERTS: _certs, ...rest } = env;
  return { ...rest, ORT_DISABLE_TELEMETRY: '1', GLIBC_TUNABLES: withHugeMalloc(env.GLIBC_TUNABLES) };
}

/** A worker script (one that serves the isolated forward pass's protocol) forked with its output through ours. */
export function forkWorker(worker: string): ChildProcess {
  const child = fork(worker, [], {
    // The built worker is plain JavaScript; from sources (tests) the child loads tsx.
    execArgv: worker.endsWith('.ts') ? ['--import', pathToFileURL(require.resolve('tsx')).href] : [],
    // Set in the child's environment, so they hold from its first line, whatever it loads first. Huge pages for
    // malloc's large blocks: the weight buffers and onnxruntime's arena fault in 2 MiB at a time.
    env: workerEnv(process.env),
    serialization: 'advanced',
    // Its output (onnxruntime's own warnings) through this process's streams, so that whoever captures them
    // (Nx's batch mode, per task) gets it under the task that ran the pass.
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  child.stdout!.on('data', (d: Buffer) => process.stdout.write(d));
  child.stderr!.on('data', (d: Buffer) => process.stderr.write(d));
  return child;
}

/*
 * A forward worker forked by the command's first lines (bin/, before the merge's bundle loads: ~0.2 s sooner than
 * the merge could), so that it has booted and set up the first layer by the time the prompts are known. The merge's
 * bundle is another module instance: it takes the worker over through this process-wide slot (adoptEarlyWorker).
 */
const SLOT = Symbol.for('moe-forge.early-forward-worker');
type Slot = { [SLOT]?: { worker: string; child: ChildProcess } };
const slot = globalThis as Slot;

/** Whether a forked worker can still take a request (running, its channel open). */
export const workerAlive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null && c.connected;
let dropAtExit = false;

/** Forks `worker` now into the slot (a no-op when one waits there already). */
export function forkEarlyWorker(worker: string): void {
  if (slot[SLOT] && workerAlive(slot[SLOT].child)) return;
  const child = forkWorker(worker);
  child.on('error', () => undefined); // a failed early worker is passed over (workerAlive() is false)
  slot[SLOT] = { worker, child };
  if (!dropAtExit) {
    dropAtExit = true;
    process.once('exit', dropEarlyWorker);
  }
}

/** The early worker when it runs `worker` and still lives, taken out of the slot; any other is ended. */
export function adoptEarlyWorker(worker: string): ChildProcess | null {
  const early = slot[SLOT];
  delete slot[SLOT];
  if (!early) return null;
  if (early.worker === worker && workerAlive(early.child)) return early.child;
  if (early.child.exitCode === null && early.child.signalCode === null) early.child.kill();
  return null;
}

/** Ends the early worker if nothing took it (the command needed no forward pass, or stopped before one). */
export function dropEarlyWorker(): void {
  const early = slot[SLOT];
  delete slot[SLOT];
  if (early && early.child.exitCode === null && early.child.signalCode === null) early.child.kill();
}

/** The early worker's process id while it waits in the slot (null when none). */
export function earlyWorkerPid(): number | null {
  return earlyWorker()?.pid ?? null;
}

/** The early worker while it waits in the slot (null when none): to tell it what comes. */
export function earlyWorker(): ChildProcess | null {
  const early = slot[SLOT];
  return early && workerAlive(early.child) ? early.child : null;
}
