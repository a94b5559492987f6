import { mkdtempSync, rmSync, cpSync, chmodSync, readdirSync, statSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { after } from 'node:test';

export const ROOT = resolve(__dirname, '..', '..');
export const FIXTURES = join(ROOT, 'test', 'fixtures');
export const TINY = (n: 'a' | 'b' | 'c') => join(FIXTURES, 'tiny-llama', `tiny-${n}`);

/** A temporary folder removed when the test file finishes. */
export function tempDir(prefix = 'moe-forge-test-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  after(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Copies a fixture model into a writable folder so a test can alter it. */
export function copyModel(src: string, dest: string): string {
  cpSync(src, dest, { recursive: true });
  const walk = (p: string) => {
    chmodSync(p, statSync(p).isDirectory() ? 0o755 : 0o644);
    if (statSync(p).isDirectory()) for (const f of readdirSync(p)) walk(join(p, f));
  };
  walk(dest);
  return dest;
}

/**
 * A folder as a run of process `pid` leaves it (its work-folder marker inside), named `name` in `parent`:
 * what a SIGKILLed run leaves, for the start-up cleanup to find. `markedAs` names the folder in the marker
 * (an `.old-` folder is marked before it is renamed).
 */
export function leftoverFolder(path: string, pid: number, markedAs = basename(path)): string {
  mkdirSync(path);
  writeFileSync(join(path, '.moe-forge-work'), JSON.stringify({ tool: 'moe-forge', name: markedAs, pid }));
  return path;
}
