/** Throwaway Nx workspaces (filled as the tests' are) and timed subprocesses for the benchmark. */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { populateWorkspace } from '../tools/testing/workspace';
import { join, relative, resolve } from 'node:path';

export const ROOT = resolve(__dirname, '..');

/** A workspace with this repository's plugin, libraries and installed packages (node_modules linked). */
export function throwawayWorkspace(dir: string): string {
  return populateWorkspace(dir);
}

export function addRecipe(ws: string, name: string, yaml: string): string {
  const dir = join(ws, 'workspace-models', name);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'moe.yml');
  writeFileSync(file, yaml);
  return file;
}

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Runs a command to completion and times it (wall clock, including process start). */
export function timed(cmd: string, args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<Ran> {
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: { ...process.env, FORCE_COLOR: '0', ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code, stdout, stderr, seconds: (performance.now() - t0) / 1000 }));
  });
}

/** Real `nx` in the workspace, without daemon, cloud or terminal UI; the prompt cache inside the workspace. */
export async function nx(ws: string, args: string[], env: Record<string, string> = {}): Promise<Ran> {
  const r = await timed(process.execPath, [join(ws, 'node_modules', 'nx', 'dist', 'bin', 'nx.js'), ...args], {
    cwd: ws,
    // Plugin workers' sockets in the workspace (Nx's default root, /tmp/.nx, keeps a folder per workspace).
    env: { NX_DAEMON: 'false', NX_NO_CLOUD: 'true', CI: 'true', NX_TUI: 'false', MOE_FORGE_CACHE: join(ws, '.moe-cache'), NX_SOCKET_DIR: join(ws, '.nx-sockets'), ...env },
  });
  if (r.code !== 0) throw new Error(`nx ${args.join(' ')} failed (${r.code}):\n${r.stdout}\n${r.stderr}`);
  return r;
}

export interface TaskTiming {
  task: string;
  target: string;
  seconds: number;
  status: string;
}

/**
 * `nx` with NX_PROFILE: also each task's own duration and status (Nx's task-profiling trace), so a build's
 * wall time splits into the stages' work and what Nx spends around them.
 */
export async function nxProfiled(ws: string, args: string[], env: Record<string, string> = {}): Promise<Ran & { tasks: TaskTiming[] }> {
  const file = join(ws, '..', `nx-profile-${process.pid}-${Date.now()}.json`);
  // Nx joins the variable to its working directory, so it is given relative to the workspace.
  const r = await nx(ws, args, { ...env, NX_PROFILE: relative(ws, file) });
  const events = JSON.parse(readFileSync(file, 'utf8')) as { name: string; ph: string; dur: number; args: { target?: { target: string }; status?: string } }[];
  rmSync(file, { force: true });
  const tasks = events.filter((e) => e.ph === 'X').map((e) => ({ task: e.name, target: e.args.target?.target ?? '', seconds: e.dur / 1e6, status: e.args.status ?? '' }));
  return { ...r, tasks };
}
