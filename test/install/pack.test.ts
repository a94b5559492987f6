import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { run } from '../helpers/cli';
import { FIXTURES, ROOT, tempDir } from '../helpers/tmp';

// The package as a user gets it: `npm pack` (which runs prepare: the build), then installed from the tarball,
// globally into a temporary prefix and as a project's dependency. Dependencies come from the npm cache (`npm ci`
// filled it); --ignore-scripts as the README says: no dependency's install script is needed.
const NPM_INSTALL = ['--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund'];
const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const d = tempDir('moe-forge-pack-');
const prefix = join(d, 'prefix');
const project = join(d, 'project');
const bin = join(prefix, 'bin', 'mergekit-moe');
let tgz = '';
// Never the user's prompt-state cache.
const env = { MOE_FORGE_CACHE: join(d, 'cache') };

/** A folder away from the checkout holding the tiny models and a recipe of `mode` over them. */
function mergeFolder(name: string, mode: 'cheap_embed' | 'hidden'): string {
  const dir = join(d, name);
  cpSync(join(FIXTURES, 'tiny-llama'), join(dir, 'models'), { recursive: true });
  const recipe = readFileSync(join(FIXTURES, 'parity', `mixtral-${mode}.yml`), 'utf8').replace(/\.\.\/tiny-llama/g, 'models');
  writeFileSync(join(dir, 'moe.yml'), recipe);
  return dir;
}

function assertModelFolder(out: string): void {
  const files = readdirSync(out);
  assert.ok(files.includes('config.json'), files.join(' '));
  assert.ok(files.some((f) => f.endsWith('.safetensors')), files.join(' '));
}

before(async () => {
  const pack = await run('npm', ['pack', '--pack-destination', d], ROOT);
  assert.equal(pack.exitCode, 0, pack.stderr);
  tgz = join(d, pack.stdout.trim().split('\n').pop()!);
  cpSync(join(FIXTURES, 'tiny-llama'), join(project, 'models'), { recursive: true });
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'uses-moe-forge', private: true }));
  const [g, local] = await Promise.all([
    run('npm', ['install', '-g', '--prefix', prefix, tgz, ...NPM_INSTALL], d),
    run('npm', ['install', tgz, ...NPM_INSTALL], project),
  ]);
  assert.equal(g.exitCode, 0, g.stderr);
  assert.equal(local.exitCode, 0, local.stderr);
});

test('the tarball holds the built command, worker and library, and no sources, tests or fixtures', async () => {
  const r = await run('tar', ['-tzf', tgz], d);
  const files = r.stdout.trim().split('\n').sort();
  assert.deepEqual(files, ['package/README.md', 'package/bin/built.js', 'package/bin/mergekit-moe.js', 'package/build/cli.js', 'package/build/early.js', 'package/build/forward-worker.js', 'package/build/hash-worker.js', 'package/build/index.d.ts', 'package/build/index.js', 'package/build/noise-worker.js', 'package/build/noop.js', 'package/build/routing-worker.js', 'package/package.json']);
});

test('mergekit-moe installed from the tarball prints its version and merges a cheap_embed recipe from another folder', async () => {
  const v = await run(bin, ['--version'], d);
  assert.equal(v.exitCode, 0, v.stderr);
  assert.equal(v.stdout, `mergekit-moe (moe-forge) ${VERSION}`);
  const dir = mergeFolder('cheap', 'cheap_embed');
  const r = await run(bin, ['moe.yml', 'out'], dir, env);
  assert.equal(r.exitCode, 0, r.stderr);
  assertModelFolder(join(dir, 'out'));
});

test('the installed mergekit-moe runs a hidden-gate merge with its report: both workers run from the package', async () => {
  const dir = mergeFolder('hidden', 'hidden');
  // --report runs the merged model in the routing worker, the gates' forward pass in the forward worker.
  const r = await run(bin, ['moe.yml', 'out', '--report', 'routing.html'], dir, { ...env, HF_HUB_OFFLINE: '1' });
  assert.equal(r.exitCode, 0, r.stderr);
  assertModelFolder(join(dir, 'out'));
  assert.match(readFileSync(join(dir, 'routing.json'), 'utf8'), /"measured"/);
  assert.ok(!existsSync(join(prefix, 'lib', 'node_modules', 'moe-forge', '.nx')), 'nothing built beside the package');
});

test("the README's library example type-checks against the installed package's types and merges", async () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('### Scripting merges in TypeScript'));
  const example = /```ts\n([\s\S]*?)```/.exec(section)![1]!;
  assert.match(example, /from 'moe-forge'/);
  writeFileSync(join(project, 'example.ts'), example);
  writeFileSync(join(project, 'moe.yml'), readFileSync(join(FIXTURES, 'parity', 'mixtral-cheap_embed.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, 'models'));
  // Types as a TypeScript user resolves them (package.json "exports"), strict.
  const tsc = await run(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--typeRoots', join(ROOT, 'node_modules', '@types'), '--types', 'node', 'example.ts'], project);
  assert.equal(tsc.exitCode, 0, tsc.stdout + tsc.stderr);
  // tsx (the checkout's) only to run the .ts file as a TypeScript user would; the package itself needs none.
  const r = await run(process.execPath, ['--import', pathToFileURL(require.resolve('tsx')).href, 'example.ts'], project, env);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /^wrote .*my-moe: \d+ shards, \d+ files$/);
  assertModelFolder(join(project, 'my-moe'));
  // Plain CommonJS too.
  const cjs = await run(process.execPath, ['-e', "const m = require('moe-forge'); process.stdout.write(typeof m.merge)"], project);
  assert.equal(cjs.stdout, 'function');
});
