import { cpSync, mkdirSync, symlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(__dirname, '..', '..');

/**
 * Fills `dir` as a throwaway Nx workspace with this repository's plugin, sources and installed packages, for the
 * tests and the bench alike. What runs is the checkout's build (linked), checked against the copied sources.
 */
export function populateWorkspace(dir: string): string {
  mkdirSync(dir, { recursive: true });
  for (const f of ['nx.json', 'package.json', 'package-lock.json', 'tsconfig.base.json']) cpSync(join(ROOT, f), join(dir, f));
  for (const d of ['libs', 'tools', 'bin', 'scripts']) cpSync(join(ROOT, d), join(dir, d), { recursive: true });
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
  symlinkSync(join(ROOT, 'build'), join(dir, 'build'), 'dir');
  mkdirSync(join(dir, 'workspace-models'));
  return dir;
}
