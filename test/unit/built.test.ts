import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, tempDir } from '../helpers/tmp';

/**
 * A checkout of its own (sources copied, node_modules linked), built as `npm ci` builds it; `settled`: built a
 * second after the copy, so the build records the sources' stat keys (bin/built.js then compares those first).
 */
function checkout(settled = false): string {
  const d = tempDir();
  for (const f of ['bin', 'libs', 'tools', 'scripts', 'native']) cpSync(join(ROOT, f), join(d, f), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(d, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(d, 'node_modules'));
  if (settled) spawnSync('sleep', ['1.2']);
  const b = build(d);
  assert.equal(b.status, 0, b.stderr);
  return d;
}

const build = (d: string) => spawnSync(process.execPath, [join(d, 'scripts', 'build.mjs')], { encoding: 'utf8' });
const help = (d: string) => spawnSync(process.execPath, [join(d, 'bin', 'mergekit-moe.js'), '--help'], { encoding: 'utf8', cwd: d });

test('mergekit-moe runs from build/, made at install: nothing is bundled or compiled on first use', () => {
  const d = checkout();
  const r = help(d);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Usage: mergekit-moe CONFIG_PATH OUT_PATH/);
  assert.ok(!existsSync(join(d, '.nx')), 'no bundle folder made at run time');
  for (const f of ['cli.js', 'forward-worker.js', 'noise-worker.js', 'hash-worker.js', 'index.js', 'index.d.ts', 'plugin.js', 'recipe-generator.js', 'executors/fetch.js', 'executors/write.js', 'runtime/model-ids.js', 'runtime/output-state.js']) assert.ok(existsSync(join(d, 'build', f)), f);
  // Nothing built needs tsx (a devDependency) or esbuild at run time.
  for (const f of ['cli.js', 'forward-worker.js', 'noise-worker.js', 'hash-worker.js', 'index.js', 'executors/embed-prompts.js']) assert.doesNotMatch(readFileSync(join(d, 'build', f), 'utf8'), /require\("(tsx|esbuild)/, f);
});

for (const settled of [false, true]) test(`a source replaced with cp -p (same size, same mtime) makes the build stale: refused in one line until npm run build${settled ? ' (the stat keys recorded)' : ''}`, () => {
  const d = checkout(settled);
  const stats = JSON.parse(readFileSync(join(d, 'build', 'manifest.json'), 'utf8')).stats as Record<string, string>;
  // Only sources settled before the build read them have their stat key recorded.
  assert.equal('libs/options/schema.ts' in stats, settled);
  // Same length, other text, the old file's times: only the content tells. (--help's text is made by the options table.)
  const src = join(d, 'libs', 'options', 'schema.ts');
  const copy = join(d, 'schema.ts');
  assert.match(readFileSync(src, 'utf8'), /Usage: mergekit-moe/);
  writeFileSync(copy, readFileSync(src, 'utf8').replace('Usage: mergekit-moe', 'USAGE: mergekit-moe'));
  assert.equal(spawnSync('touch', ['-r', src, copy]).status, 0);
  assert.equal(spawnSync('cp', ['-p', copy, src]).status, 0);
  const stale = help(d);
  assert.equal(stale.status, 1);
  assert.equal(stale.stderr, 'error: moe-forge: build/ is out of date (libs/options/schema.ts changed): run npm run build\n');
  assert.equal(build(d).status, 0);
  const r = help(d);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /USAGE: mergekit-moe/, 'built from the new source');
});

test('an Nx executor refuses a stale build the same way', () => {
  const d = checkout();
  const src = join(d, 'libs', 'recipe', 'schema.ts');
  writeFileSync(src, readFileSync(src, 'utf8') + '\n');
  const r = spawnSync(process.execPath, ['-e', "require('./tools/executors/fetch/impl.js')"], { encoding: 'utf8', cwd: d });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /moe-forge: build\/ is out of date \(libs\/recipe\/schema\.ts changed\): run npm run build/);
});

test("fetch's runtime input (build/runtime/model-ids.js) says the build is stale instead of hashing old code's answer", () => {
  const d = checkout();
  const src = join(d, 'libs', 'recipe', 'schema.ts');
  writeFileSync(src, readFileSync(src, 'utf8') + '\n');
  writeFileSync(join(d, 'moe.yml'), 'base_model: ./nowhere\n');
  const r = spawnSync(process.execPath, ['build/runtime/model-ids.js', 'moe.yml'], { encoding: 'utf8', cwd: d });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'unresolved: moe-forge: build/ is out of date (libs/recipe/schema.ts changed): run npm run build\n');
});

test("the command's own process loads no onnxruntime (only its forward worker does): loading the command's bundles leaves it out", () => {
  const script = `for (const f of ['noop.js', 'early.js', 'cli.js']) require(${JSON.stringify(join(ROOT, 'build'))} + '/' + f);
    console.log(JSON.stringify(Object.keys(require.cache).filter((k) => k.includes('onnxruntime'))));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), []);
});

/** In a fresh node (with `flags`): loads `file` through bin/built.js's loadBuilt, prints how it was compiled and its exports. */
const loadIn = (file: string, flags: string[] = []) => {
  const r = spawnSync(process.execPath, [...flags, '-e', `const b = require(${JSON.stringify(join(ROOT, 'bin', 'built.js'))}); const m = b.loadBuilt(process.argv[1]); console.log(JSON.stringify([b.codeCache.get(process.argv[1]), typeof m.main === 'function' ? 'main' : m.answer]))`, file], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as [string, unknown];
};

test("the command's bundle carries its plain-JavaScript packages (zod, yaml, cacache) and loads with the code cache the build made for it", () => {
  const cli = join(ROOT, 'build', 'cli.js');
  assert.doesNotMatch(readFileSync(cli, 'utf8'), /require\("(zod|yaml|cacache)"\)/);
  // ASCII only: one other character anywhere makes V8 hold the whole source as a two-byte string.
  assert.doesNotMatch(readFileSync(cli, 'latin1'), /[^\x00-\x7f]/);
  assert.deepEqual(loadIn(cli), ['cache', 'main']);
  // Other V8 flags: V8 refuses the cache, and the bundle compiles afresh.
  assert.deepEqual(loadIn(cli, ['--no-opt']), ['rejected', 'main']);
});

test('a code cache is used only for the bytes it was made from and only whole: another file of the same size, or damaged data, loads without it', async () => {
  const { writeCodeCache } = (await import(join(ROOT, 'scripts', 'code-cache.mjs'))) as { writeCodeCache(file: string, at?: string): string | null };
  const d = tempDir();
  const made = (name: string, answer: number) => {
    const file = join(d, name);
    writeFileSync(file, `'use strict';\nconst table = Array.from({ length: 64 }, (_, i) => i * ${answer});\nmodule.exports = { answer: ${answer}, sum: () => table.reduce((a, b) => a + b, 0) };\n`);
    assert.equal(writeCodeCache(file), null);
    return file;
  };
  assert.deepEqual(loadIn(made('whole.js', 42)), ['cache', 42]);
  // The same length, other bytes: the cache's first digest no longer matches.
  const other = made('other.js', 42);
  writeFileSync(other, readFileSync(other, 'utf8').replace(/42/g, '43'));
  assert.deepEqual(loadIn(other), ['none', 43]);
  // V8's data damaged (its header intact): the second digest catches it before V8 reads it.
  const damaged = made('damaged.js', 7);
  const cache = readFileSync(`${damaged}.v8cache`);
  cache[cache.length - 9] ^= 0x5a;
  writeFileSync(`${damaged}.v8cache`, cache);
  assert.deepEqual(loadIn(damaged), ['none', 7]);
  // No cache at all: a plain require.
  const bare = join(d, 'bare.js');
  writeFileSync(bare, 'module.exports = { answer: 1 };\n');
  assert.deepEqual(loadIn(bare), ['none', 1]);
});

test("a finished command's process exits at once only when nothing of its own is left: a timer, a child or unwritten output keeps the natural exit", () => {
  const { idle } = require('../../bin/built.js') as { idle: (open: string[], stdio: number, unwritten: number) => boolean };
  assert.equal(idle([], 0, 0), true);
  assert.equal(idle(['PipeWrap', 'PipeWrap'], 2, 0), true, "stdout's and stderr's pipes");
  assert.equal(idle(['PipeWrap', 'PipeWrap', 'PipeWrap'], 2, 0), false, "a pipe that is not stdout's or stderr's (a child's)");
  assert.equal(idle(['Timeout'], 2, 0), false);
  assert.equal(idle(['ProcessWrap', 'PipeWrap'], 2, 0), false);
  assert.equal(idle(['FSReqCallback'], 2, 0), false);
  assert.equal(idle(['TTYWrap'], 1, 12), false, 'output not yet written');
  // In a process ('beforeExit' comes only with the natural exit): a pending timer's work is done and the exit is
  // the natural one; with nothing pending the process exits at once, with the exit code set.
  const built = JSON.stringify(join(ROOT, 'bin', 'built.js'));
  const natural = "let said = false; process.on('beforeExit', () => { if (!said) process.stdout.write(' natural'); said = true; });";
  const late = spawnSync(process.execPath, ['-e', `${natural} process.exitCode = 3; setTimeout(() => process.stdout.write('late'), 200); require(${built}).exitWhenIdle();`], { encoding: 'utf8' });
  assert.equal(late.stdout, 'late natural');
  assert.equal(late.status, 3);
  const now = spawnSync(process.execPath, ['-e', `${natural} process.exitCode = 4; process.stdout.write('done'); require(${built}).exitWhenIdle();`], { encoding: 'utf8' });
  assert.equal(now.stdout, 'done');
  assert.equal(now.status, 4);
});

test('the bundles carry the float kernels\' WebAssembly modules assembled at build, byte for byte what the sources assemble (a command does not assemble them)', async () => {
  const built = JSON.parse(readFileSync(join(ROOT, 'build', 'float-wasm.json'), 'utf8')) as Record<string, string>;
  const { FLOAT_WASM_MODULES } = await import('../../libs/safetensors/float-wasm');
  assert.deepEqual(Object.keys(built).sort(), Object.keys(FLOAT_WASM_MODULES).sort());
  for (const [name, make] of Object.entries(FLOAT_WASM_MODULES)) assert.equal(built[name], Buffer.from(make()).toString('base64'), name);
  for (const f of ['cli.js', 'forward-worker.js']) assert.ok(readFileSync(join(ROOT, 'build', f), 'utf8').includes(built.kernels!), `${f} holds them`);
});

test('the native addons are compiled at install where a C compiler is, and again only when a source or a header it includes changes', { skip: spawnSync('cc', ['--version']).status !== 0 && 'no C compiler' }, () => {
  const d = checkout();
  const native = () => JSON.parse(readFileSync(join(d, 'build', 'manifest.json'), 'utf8')).native as Record<string, string>;
  const first = native();
  assert.deepEqual(Object.keys(first).sort(), ['bf16-matmul.node', 'normals.node']);
  for (const f of Object.keys(first)) assert.ok(existsSync(join(d, 'build', f)), f);
  // An edit of the header normals.c includes (the SIMD template) builds that addon again, and only that one.
  const header = join(d, 'native', 'normals-simd.h');
  writeFileSync(header, readFileSync(header, 'utf8') + '// edited\n');
  const b = build(d);
  assert.equal(b.status, 0, b.stderr);
  const second = native();
  assert.notEqual(second['normals.node'], first['normals.node']);
  assert.equal(second['bf16-matmul.node'], first['bf16-matmul.node']);
  // A header that does not compile: the build goes on without that addon and says why.
  writeFileSync(header, readFileSync(header, 'utf8') + 'this is not C\n');
  const broken = build(d);
  assert.equal(broken.status, 0, broken.stderr);
  assert.match(broken.stderr, /native\/normals\.c not compiled \(.*\): the noise is generated in WebAssembly/);
  assert.deepEqual(Object.keys(native()), ['bf16-matmul.node']);
  assert.ok(!existsSync(join(d, 'build', 'normals.node')), 'no stale addon left beside the build');
});
