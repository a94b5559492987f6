import { join } from 'node:path';
import { ROOT, tempDir } from './tmp';

// Keep the command's caches out of the user's home during tests (removed when the test file ends).
const testCache = tempDir('moe-forge-cli-cache-');

// execa is ESM-only and its dependencies export no CommonJS entry: load it with a real dynamic import.
const execaModule = import('execa');

/** Runs a command in a subprocess, as a user would; never throws on a non-zero exit. */
export async function run(cmd: string, args: string[], cwd: string, env: Record<string, string | undefined> = {}) {
  const { execa } = await execaModule;
  return execa(cmd, args, { cwd, reject: false, env: { ...process.env, FORCE_COLOR: '0', NX_DAEMON: 'false', ...env } });
}

/** The real `mergekit-moe` command. */
export async function mergekitMoe(args: string[], cwd: string, env: Record<string, string | undefined> = {}) {
  return run(process.execPath, [join(ROOT, 'bin', 'mergekit-moe.js'), ...args], cwd, { MOE_FORGE_CACHE: testCache, ...env });
}
