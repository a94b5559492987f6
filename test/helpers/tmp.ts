import { mkdtempSync, rmSync, cpSync, chmodSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
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
