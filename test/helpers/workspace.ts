import { mkdirSync, writeFileSync } from 'node:fs';
import { populateWorkspace } from '../../tools/testing/workspace';
import { join } from 'node:path';
import { run } from './cli';
import { tempDir } from './tmp';

/** A throwaway Nx workspace with this repository's plugin, libraries and installed packages. */
export function throwawayWorkspace(prefix = 'moe-forge-ws-'): string {
  // scripts/test.mjs builds first: the linked build/ matches the copied sources.
  return populateWorkspace(tempDir(prefix));
}

export function addRecipe(ws: string, name: string, yaml: string, projectJson?: object): void {
  const dir = join(ws, 'workspace-models', name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'moe.yml'), yaml);
  if (projectJson) writeFileSync(join(dir, 'project.json'), JSON.stringify(projectJson, null, 2));
}

/**
 * Plugins load in the nx process: Nx's default forks a worker per plugin (ours and its own defaults) on every
 * command, about 2.5 s of CPU a call, and nothing the tests prove depends on where createNodes runs. Tests that
 * build under Nx's default say so (`ISOLATED`); `NX_ISOLATE_PLUGINS=true npm test` runs them all that way.
 */
const PLUGINS_IN_PROCESS = process.env.NX_ISOLATE_PLUGINS ?? 'false';
/** The environment for an nx call as users run it, plugins in worker processes. */
export const ISOLATED = { NX_ISOLATE_PLUGINS: 'true' } as const;

// Plugin workers' sockets in the workspace, which the test removes: Nx's default root is a literal /tmp/.nx, where
// each workspace left a folder behind.
export function nx(ws: string, args: string[], env: Record<string, string | undefined> = {}) {
  return run(process.execPath, [join(ws, 'node_modules', 'nx', 'dist', 'bin', 'nx.js'), ...args], ws, { NX_DAEMON: 'false', NX_NO_CLOUD: 'true', CI: 'true', NX_TUI: 'false', NX_ISOLATE_PLUGINS: PLUGINS_IN_PROCESS, MOE_FORGE_CACHE: join(ws, '.moe-cache'), NX_SOCKET_DIR: join(ws, '.nx-sockets'), ...env });
}

/** A hidden-gate recipe over the workspace's tiny fixture models (under models/), written in bfloat16. */
export const TINY_BF16_RECIPE = `base_model: ../../models/tiny-a
gate_mode: hidden
dtype: bfloat16
experts:
  - source_model: ../../models/tiny-a
    positive_prompts: ["How do I merge two models with mergekit?"]
  - source_model: ../../models/tiny-b
    positive_prompts: ["Write a python function that adds numbers"]
`;
