import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, ISOLATED, nx, throwawayWorkspace, TINY_BF16_RECIPE } from '../helpers/workspace';
import { spawnSync } from 'node:child_process';
import { runtimeCommand, scriptPath } from '../../tools/executors/fast-input';

const ws = throwawayWorkspace('moe-forge-ws-noop-');
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
const recipe = TINY_BF16_RECIPE;
addRecipe(ws, 'n', recipe);
const out = join(ws, 'dist', 'models', 'n');
const recipeFile = join(ws, 'workspace-models', 'n', 'moe.yml');
const TARGETS = ['check-options', 'fetch', 'embed-prompts', 'build-gates', 'report', 'assemble-experts', 'write'];

/** Which targets Nx ran (not restored from its cache), and what write did when it ran. */
async function build(env: Record<string, string> = {}): Promise<{ ran: string[]; write: string }> {
  const r = await nx(ws, ['run', 'n:build'], env);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const ran: string[] = [];
  for (const t of TARGETS) {
    const line = r.stdout.split('\n').find((l) => l.includes(`nx run n:${t}`));
    assert.ok(line, `${t} appears in the output:\n${r.stdout}`);
    if (!/\[(local|remote) cache\]|existing outputs match the cache/.test(line)) ran.push(t);
  }
  // The summary counts every task: all of them from the cache, or some run.
  if (ran.length === 0) assert.match(r.stdout, /Nx read the output from the cache instead of running the command for \d+ out of \d+ tasks/);
  return { ran, write: /output unchanged/.test(r.stdout) && ran.includes('write') ? 'unchanged' : ran.includes('write') ? 'wrote' : 'cache' };
}

function snapshot(): Map<string, Buffer> {
  return new Map(readdirSync(out).map((f) => [f, readFileSync(join(out, f))]));
}

test('an untouched workspace builds from the cache alone; a deleted, edited or replaced model folder is written again', async () => {
  const first = await build();
  assert.ok(first.ran.includes('write'));
  const written = snapshot();

  // (b) Right after the first build: every task a cache hit, no stage runs, the folder as it was; with the plugin
  // in Nx's worker process too (Nx's default; the other builds load it in-process: test/helpers/workspace.ts).
  assert.deepEqual((await build(ISOLATED)).ran, []);
  assert.deepEqual(snapshot(), written);
  // ... and the runtime inputs start no node: their shell scripts answer, fetch's and write's (which checks fetch's
  // models.json by content: without the daemon, Nx rewrites it, same bytes and a new ctime, on every cache hit).
  assert.deepEqual((await build()).ran, []);
  for (const kind of ['model-ids-', 'output-state-']) {
    const fast = readdirSync(join(ws, '.nx', 'moe-forge', 'fast')).filter((f) => f.startsWith(kind));
    assert.equal(fast.length, 1, kind);
    assert.equal(spawnSync('sh', [join('.nx', 'moe-forge', 'fast', fast[0]!)], { cwd: ws }).status, 0, `${kind} script answers`);
  }

  // (c) The folder deleted: write runs and writes it again, byte for byte; the next build is a cache hit.
  rmSync(out, { recursive: true });
  const again = await build();
  assert.deepEqual(again.ran, ['write']);
  assert.deepEqual(snapshot(), written);
  assert.deepEqual((await build()).ran, []);

  // (d) One file edited in place, size kept (a byte of a shard flipped): write repairs that file.
  const shard = readdirSync(out).find((f) => f.endsWith('.safetensors'))!;
  const bytes = readFileSync(join(out, shard));
  bytes[bytes.length - 1] ^= 0xff;
  writeFileSync(join(out, shard), bytes);
  const repaired = await build();
  assert.deepEqual(repaired.ran, ['write']);
  assert.deepEqual(snapshot(), written);
  assert.deepEqual((await build()).ran, []);
  // The model card edited (its size changes): repaired too.
  writeFileSync(join(out, 'README.md'), 'my notes');
  assert.deepEqual((await build()).ran, ['write']);
  assert.deepEqual(snapshot(), written);
  // A file the user adds is theirs: kept, and no reason to write again.
  writeFileSync(join(out, 'NOTES.txt'), 'mine');
  assert.deepEqual((await build()).ran, []);
  rmSync(join(out, 'NOTES.txt'));

  // An edit that changes the model: write replaces the folder; the next build runs write once more to confirm
  // (it writes nothing), and from then on no stage runs.
  writeFileSync(recipeFile, recipe.replace('dtype: bfloat16', 'dtype: float32'));
  assert.equal((await build()).write, 'wrote');
  const f32 = snapshot();
  assert.notDeepEqual(f32, written);
  const confirm = await build();
  assert.deepEqual(confirm.ran, ['write']);
  assert.equal(confirm.write, 'unchanged');
  assert.deepEqual((await build()).ran, []);
  // Back to the first recipe: the earlier stages come from the cache, but write must not (the folder holds float32).
  writeFileSync(recipeFile, recipe);
  const back = await build();
  assert.equal(back.write, 'wrote');
  assert.deepEqual(snapshot(), written);
  // And forth again: write runs, the float32 folder returns.
  writeFileSync(recipeFile, recipe.replace('dtype: bfloat16', 'dtype: float32'));
  assert.equal((await build()).write, 'wrote');
  assert.deepEqual(snapshot(), f32);

  // The record is forgotten (an `rm -rf .nx/moe-forge`): write runs once and writes nothing.
  rmSync(join(ws, '.nx', 'moe-forge', 'outputs'), { recursive: true });
  const forgot = await build();
  assert.deepEqual(forgot.ran, ['write']);
  assert.equal(forgot.write, 'unchanged');
  assert.deepEqual(snapshot(), f32);
  assert.ok(statSync(out).isDirectory());
});

test("fetch's runtime input answers from its memo without loading the stages' code, and recomputes when a model file changes", async () => {
  const { run } = await import('../helpers/cli');
  // NODE_DEBUG=module names each module node loads: whether the stages' code (build/executors/model-ids.js) was.
  const ids = () => run(process.execPath, ['build/runtime/model-ids.js', 'workspace-models/n/moe.yml'], ws, { NODE_DEBUG: 'module' });
  const loadedCode = (r: { stderr: string }) => /load "[^"]*build\/executors\/model-ids\.js"/.test(r.stderr);
  // The command Nx runs: the shell script while it answers, else node.
  const command = runtimeCommand('model-ids', ['workspace-models/n/moe.yml']);
  const viaNx = () => spawnSync('sh', ['-c', command], { cwd: ws, encoding: 'utf8' });
  const script = join(ws, scriptPath('model-ids', ['workspace-models/n/moe.yml']));
  const first = await ids();
  assert.match(first.stdout, /^\.\.\/\.\.\/models\/tiny-a [0-9a-f]{64}$/m);
  const memo = await ids();
  assert.equal(memo.stdout, first.stdout);
  assert.ok(!loadedCode(memo), 'the memo answered, without loading the code');
  // (execa drops the last newline of node's answer.)
  assert.deepEqual({ stdout: viaNx().stdout, stderr: viaNx().stderr }, { stdout: `${first.stdout}\n`, stderr: '' });
  assert.equal(spawnSync('sh', [script], { cwd: ws, encoding: 'utf8' }).stdout, `${first.stdout}\n`, 'the script answered');
  // A tokenizer file edited in place (size kept): the memo misses and the content id changes.
  const file = join(ws, 'models', 'tiny-b', 'tokenizer_config.json');
  const text = readFileSync(file, 'utf8');
  writeFileSync(file, text.slice(0, -1) + (text.endsWith(' ') ? '\n' : ' '));
  assert.equal(spawnSync('sh', [script], { cwd: ws }).status, 1, 'the script no longer answers');
  const changed = await ids();
  assert.ok(loadedCode(changed), 'the ids were computed again');
  assert.equal(viaNx().stdout, `${changed.stdout}\n`);
  assert.notEqual(changed.stdout, first.stdout);
  assert.equal(changed.stdout.split('\n')[0], first.stdout.split('\n')[0], 'tiny-a keeps its id');
  writeFileSync(file, text);
});

test('stats set back are seen: a shard damaged in place and re-dated (touch -r) is written again, not kept', async () => {
  await build();
  assert.deepEqual((await build()).ran, []);
  const written = snapshot();
  // `touch -r`: a file's atime and mtime set to another's, to the nanosecond (what cp -p and touch -d do).
  const ref = join(ws, 'timestamps');
  const shard = readdirSync(out).find((f) => f.endsWith('.safetensors'))!;
  spawnSync('touch', ['-r', join(out, shard), ref]);
  const bytes = readFileSync(join(out, shard));
  bytes[bytes.length - 1] ^= 0xff;
  writeFileSync(join(out, shard), bytes);
  spawnSync('touch', ['-r', ref, join(out, shard)]);
  assert.equal(statSync(join(out, shard)).mtimeMs, statSync(ref).mtimeMs);
  const repaired = await build();
  assert.deepEqual(repaired.ran, ['write']);
  assert.deepEqual(snapshot(), written, 'the damaged shard was written again, not kept');
  assert.deepEqual((await build()).ran, []);
});

test('stats set back are seen: a model file replaced in place with cp -p (same size, same mtime) re-runs fetch and the stages after it', async () => {
  await build();
  assert.deepEqual((await build()).ran, []);
  const written = snapshot();
  // A model's weights replaced by a file of the same size and mtime, in place (cp -p).
  const weights = join(ws, 'models', 'tiny-a', 'model.safetensors');
  const copy = join(ws, 'model.safetensors');
  const w = readFileSync(weights);
  w[w.length - 2] ^= 0x01;
  writeFileSync(copy, w);
  spawnSync('touch', ['-r', weights, copy]);
  assert.equal(spawnSync('cp', ['-p', copy, weights]).status, 0);
  const refetched = await build();
  assert.ok(refetched.ran.includes('fetch'), `fetch runs again: ${refetched.ran}`);
  assert.equal(refetched.write, 'wrote');
  assert.notDeepEqual(snapshot(), written);
});
