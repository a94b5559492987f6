// Node 20's test runner does not glob .ts files: collect them here.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';

function collect(dir, out) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) collect(p, out);
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}
const filter = process.argv.slice(2);
let files = collect('test', []);
if (filter.length) files = files.filter((f) => filter.some((s) => f.includes(s)));
// Longest first (the Nx builds, the packed install): two at a time, a long file started last would run alone at
// the end while the other core idles.
const SLOW = [join('test', 'nx'), join('test', 'install')];
const slow = (f) => SLOW.some((d) => f.startsWith(d));
files = [...files.filter(slow), ...files.filter((f) => !slow(f))];
// The Nx tests and the command run build/: never a build older than the sources.
const build = spawnSync(process.execPath, ['scripts/build.mjs'], { stdio: 'inherit' });
if (build.status !== 0) process.exit(build.status ?? 1);
// The whole suite (CI's run) type-checks every TypeScript source first: tests run through tsx, which checks nothing.
if (!filter.length) {
  // The libraries' boundaries: cross-library imports through an index, no cycle (scripts/check-imports.mjs).
  const imports = spawnSync(process.execPath, ['scripts/check-imports.mjs'], { stdio: 'inherit' });
  if (imports.status !== 0) process.exit(imports.status ?? 1);
  // tsconfig.json: every TypeScript source; tsconfig.js-check.json: the JavaScript shims and scripts.
  for (const config of ['tsconfig.json', 'tsconfig.js-check.json']) {
    const tsc = spawnSync(process.execPath, ['node_modules/typescript/bin/tsc', '-p', config, '--noEmit'], { stdio: 'inherit' });
    if (tsc.status !== 0) process.exit(tsc.status ?? 1);
  }
}
// Tests never write to the user's cache: one throwaway cache for the run (tests that count use their own).
const cache = mkdtempSync(join(tmpdir(), 'moe-forge-test-cache-'));
const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', ...files], { stdio: 'inherit', env: { ...process.env, MOE_FORGE_CACHE: cache } });
rmSync(cache, { recursive: true, force: true });
process.exit(r.status ?? 1);
