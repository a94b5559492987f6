// Loads an executor as one esbuild bundle of its TypeScript sources, rebuilt when a source changes.
// Nx starts a process per task; transpiling ~60 files there on each start cost ~0.25 s a stage.
'use strict';
const { existsSync, mkdirSync, readdirSync, renameSync, rmSync } = require('node:fs');
const { join, resolve } = require('node:path');
const sourceFingerprint = require('../../libs/util/source-fingerprint');

const ROOT = resolve(__dirname, '..', '..');
const SOURCES = [join(ROOT, 'libs'), join(ROOT, 'tools', 'executors')];

const fingerprint = () => sourceFingerprint(SOURCES, ['.ts', '.js', '.json']);

/** `<name>-<fingerprint>.js` in the workspace's own (git-ignored) .nx folder, built unless there; older ones removed. */
function bundle(name, entry, print, define = {}) {
  // In the workspace's own .nx folder: workspaces sharing a node_modules stay apart.
  const out = join(ROOT, '.nx', 'moe-forge', 'executors', `${name}-${print}.js`);
  if (existsSync(out)) return out;
  mkdirSync(join(out, '..'), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  require('esbuild').buildSync({
    entryPoints: [entry],
    outfile: tmp,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node20',
    packages: 'external',
    sourcemap: 'inline',
    logLevel: 'error',
    define,
  });
  renameSync(tmp, out);
  // Bundles of older sources are never loaded again.
  const dir = join(out, '..');
  const mine = new RegExp(`^${name}-[0-9a-f]{16}\\.js$`);
  for (const f of readdirSync(dir)) if (mine.test(f) && join(dir, f) !== out) rmSync(join(dir, f), { force: true });
  return out;
}

module.exports = function load(name, entry = join(__dirname, name, 'impl.ts')) {
  const print = fingerprint();
  // The forward pass forks a bundled worker too: forked from its sources it would need tsx, whose cache is
  // written into $TMPDIR, outside anything a build may write.
  const worker = bundle('forward-worker', join(ROOT, 'libs', 'forward', 'worker-main.ts'), print);
  const mod = require(bundle(name, entry, print, { __FORWARD_WORKER__: JSON.stringify(worker) }));
  return mod.default ?? mod;
};
