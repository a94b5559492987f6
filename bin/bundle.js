// The command's TypeScript sources as one esbuild bundle (plus the forward pass's worker), built on first use and
// again whenever a source changes; compiling ~60 files through tsx on every start cost ~0.5 s. The bundle lives
// in the checkout's git-ignored .nx folder, as the Nx executors' bundles do (tools/executors/load.js).
'use strict';
const { existsSync, mkdirSync, readdirSync, renameSync, rmSync } = require('node:fs');
const { join, resolve } = require('node:path');
const sourceFingerprint = require('../libs/util/source-fingerprint');

const ROOT = resolve(__dirname, '..');

// .js too: libs/util/stat-key.js is bundled (plain JavaScript, for the Nx runtime inputs).
const fingerprint = () => sourceFingerprint([join(ROOT, 'libs')], ['.ts', '.js', '.json']);

/** The CLI module from its bundle; throws when no bundle can be built or written (the caller falls back to tsx). */
function loadCli() {
  const parent = join(ROOT, '.nx', 'moe-forge', 'cli');
  const dir = join(parent, fingerprint());
  if (!existsSync(join(dir, 'cli.js'))) {
    mkdirSync(parent, { recursive: true });
    const tmp = `${dir}.${process.pid}.tmp`;
    rmSync(tmp, { recursive: true, force: true });
    require('esbuild').buildSync({
      entryPoints: { cli: join(ROOT, 'libs', 'cli', 'mergekit-moe.ts'), worker: join(ROOT, 'libs', 'forward', 'worker-main.ts') },
      outdir: tmp,
      bundle: true,
      platform: 'node',
      format: 'cjs',
      target: 'node20',
      packages: 'external',
      sourcemap: 'inline',
      logLevel: 'error',
      // The forward pass forks the bundled worker: no TypeScript compiled in the child either.
      define: { __FORWARD_WORKER__: JSON.stringify(join(dir, 'worker.js')) },
    });
    try {
      renameSync(tmp, dir);
    } catch (e) {
      // Another run built the same sources first: use its bundle.
      rmSync(tmp, { recursive: true, force: true });
      if (!existsSync(join(dir, 'cli.js'))) throw e;
    }
    // Bundles of older sources are never loaded again.
    for (const f of readdirSync(parent)) if (/^[0-9a-f]{16}$/.test(f) && f !== dir.slice(parent.length + 1)) rmSync(join(parent, f), { recursive: true, force: true });
  }
  return require(join(dir, 'cli.js'));
}

module.exports = { loadCli };
