import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/cli';
import { ROOT } from '../helpers/tmp';

// npm 11 skips dependencies' install scripts unless allowScripts names them, and warns on every `npm ci` about
// each one it does not name: every one is declared (none is needed: onnxruntime-node's downloads CUDA files,
// esbuild's and @swc/core's only swap in a native binary their packages already load, nx's is telemetry).
test('every install script of the dependencies is declared in allowScripts, and no declaration is stale', async () => {
  const r = await run('npm', ['install-scripts', 'ls'], ROOT);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /No packages with unreviewed install scripts/);
  const allow = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { allowScripts: Record<string, boolean> }).allowScripts;
  for (const name of Object.keys(allow)) {
    const scripts = (JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { scripts?: Record<string, string> }).scripts ?? {};
    assert.ok(['preinstall', 'install', 'postinstall'].some((s) => s in scripts), `${name} has an install script`);
  }
});
