import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/cli';
import { FIXTURES } from '../helpers/tmp';
import { weightSplit } from '../helpers/manifest';
import { addRecipe, ISOLATED, nx, throwawayWorkspace } from '../helpers/workspace';

const ws = throwawayWorkspace();
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
const base = `base_model: ../../models/tiny-a
gate_mode: hidden
dtype: float32
experts:
  - source_model: ../../models/tiny-a
    positive_prompts: ["How do I merge two models with mergekit?", "Explain the configuration file format"]
  - source_model: ../../models/tiny-b
    positive_prompts: ["Write a python function that adds numbers"]
    negative_prompts: ["The weather is nice today."]
`;
const shardOpts = (size: number) => ({ targets: { 'assemble-experts': { options: { outShardSize: size } } } });
addRecipe(ws, 'm', base, shardOpts(300_000));

type Stage = 'fetch' | 'embed-prompts' | 'build-gates' | 'assemble-experts' | 'write';
interface Build {
  ran: Record<Stage, 'run' | 'cache'>;
  computed: number;
  written: number;
  kept: number;
  skipped: boolean;
}

async function build(project = 'm', args: string[] = [], env: Record<string, string> = {}): Promise<Build> {
  const r = await nx(ws, ['run', `${project}:build`, ...args], env);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const ran = {} as Build['ran'];
  for (const s of ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'write'] as Stage[]) {
    const line = r.stdout.split('\n').find((l) => l.includes(`nx run ${project}:${s}`));
    assert.ok(line, `${s} appears in the output`);
    ran[s] = /\[(local|remote) cache\]|existing outputs match the cache/.test(line) ? 'cache' : 'run';
  }
  // A cached stage's output is replayed by Nx: counts of work done are in stats.json and in the notes the build
  // target prints for this run (after its header), never in a stage's own log.
  assert.doesNotMatch(r.stdout.split(new RegExp(`^> nx run ${project}:build`, 'm'))[0]!, /\d+ computed, \d+ from cache/);
  const embedStats = JSON.parse(readFileSync(join(ws, 'dist', 'stages', project, 'embed-prompts', 'stats.json'), 'utf8'));
  const stats = JSON.parse(readFileSync(join(ws, 'dist', 'stages', project, 'write', 'stats.json'), 'utf8'));
  return { ran, computed: ran['embed-prompts'] === 'run' ? embedStats.computed : 0, written: stats.written, kept: stats.kept, skipped: stats.skipped };
}

const recipeFile = join(ws, 'workspace-models', 'm', 'moe.yml');
const edit = (from: string, to: string) => writeFileSync(recipeFile, readFileSync(recipeFile, 'utf8').replace(from, to));

test('the edit matrix: each edit recomputes only what it changes', async () => {
  // Cold, with the plugin in Nx's worker process (Nx's default; the other builds load it in-process).
  const cold = await build('m', [], ISOLATED);
  assert.equal(cold.computed, 4);
  assert.ok(cold.written >= 3, `several shards written: ${cold.written}`);

  // A no-op build: every stage is a cache hit (fetch's input is the models' content ids; write's, beside the plan,
  // a token for "the folder is as written": see test/nx/noop.test.ts).
  const none = await build();
  assert.deepEqual(none.ran, { fetch: 'cache', 'embed-prompts': 'cache', 'build-gates': 'cache', 'assemble-experts': 'cache', write: 'cache' });

  edit('dtype: float32', 'dtype: bfloat16');
  const dtype = await build();
  assert.equal(dtype.computed, 0);
  assert.equal(dtype.ran['assemble-experts'], 'run');
  assert.ok(dtype.written > 0 && dtype.kept === 0, 'every shard changes dtype');

  edit('"Write a python function that adds numbers"]', '"Write a python function that adds numbers", "Fix this failing unit test"]');
  const prompt = await build();
  assert.equal(prompt.computed, 1);
  assert.equal(prompt.ran['build-gates'], 'run');
  assert.ok(prompt.written === 1 && prompt.kept >= 2, `only the router shard is rewritten: ${prompt.written} written, ${prompt.kept} kept`);

  edit('  - source_model: ../../models/tiny-b', '  - source_model: ../../models/tiny-c');
  const expert = await build();
  assert.equal(expert.computed, 0);
  assert.equal(expert.ran['build-gates'], 'run');
  assert.ok(expert.written >= 1);

  edit('base_model: ../../models/tiny-a', 'base_model: ../../models/tiny-b');
  const rebased = await build();
  assert.equal(rebased.computed, 5);

  // The base's files change in place (same path): content ids, not paths, key every stage.
  const cfgFile = join(ws, 'models', 'tiny-b', 'config.json');
  writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(readFileSync(cfgFile, 'utf8')), note: 'retrained' }));
  const changed = await build();
  assert.equal(changed.ran.fetch, 'run');
  assert.equal(changed.ran['embed-prompts'], 'run');
  assert.equal(changed.computed, 5);

  // Nx hashes every target of a project with its whole configuration, so this edit comes from the command line.
  const shards = await build('m', ['--outShardSize=50000']);
  assert.deepEqual([shards.ran['embed-prompts'], shards.ran['build-gates'], shards.ran['assemble-experts']], ['cache', 'cache', 'run']);
  assert.ok(shards.written >= 1);
  assert.ok(existsSync(join(ws, 'dist', 'models', 'm', 'model.safetensors.index.json')));
  const firstShard = () => Object.values(weightSplit(join(ws, 'dist', 'models', 'm')))[0]!;
  assert.ok(firstShard().every((n) => n.endsWith('.block_sparse_moe.gate.weight')), 'grouped: the routers come first');
  // The reference's split from the command line: write order, the embeddings first and the routers last.
  const reference = await build('m', ['--shardOrder=reference']);
  assert.equal(reference.ran['assemble-experts'], 'run');
  assert.equal(firstShard()[0], 'model.embed_tokens.weight');

  // A device given on the command line reaches the forward pass through embed-prompts' slice (it used to stop at
  // assemble-experts, which could only say where it belonged). Up to embed-prompts: its states come from the cache,
  // while the report would run the merged model on a device this machine may not have.
  const dev = await nx(ws, ['run', 'm:embed-prompts', '--device=webgpu']);
  assert.equal(dev.exitCode, 0, dev.stdout + dev.stderr);
  assert.doesNotMatch(dev.stdout + dev.stderr, /does not reach embed-prompts/);
  assert.equal(JSON.parse(readFileSync(join(ws, 'dist', 'stages', 'm', 'embed-prompts', 'prompt-states.json'), 'utf8')).device, 'webgpu');
});

test('run-many over recipes sharing a base computes each (base, prompt) state once; affected lists only the edited recipe', async () => {
  const shared = (p: string) => `base_model: ../../models/tiny-a
gate_mode: hidden
experts:
  - source_model: ../../models/tiny-b
    positive_prompts: ["A prompt both recipes share", "${p}"]
  - source_model: ../../models/tiny-c
    positive_prompts: ["Another shared prompt"]
`;
  addRecipe(ws, 'r1', shared('Only in r1'));
  addRecipe(ws, 'r2', shared('Only in r2'));
  const r = await nx(ws, ['run-many', '-t', 'build', '-p', 'r1', 'r2']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const counts = ['r1', 'r2'].map((p) => JSON.parse(readFileSync(join(ws, 'dist', 'stages', p, 'embed-prompts', 'stats.json'), 'utf8')).computed as number);
  assert.equal(counts.reduce((a, b) => a + b, 0), 4, `4 distinct prompts computed once in all: ${counts}`);

  const git = (args: string[]) => run('git', args, ws);
  await git(['init', '-q', '-b', 'main']);
  await git(['-c', 'user.email=t@t', '-c', 'user.name=t', 'add', '-A']);
  await git(['-c', 'user.email=t@t', '-c', 'user.name=t', 'commit', '-qm', 'recipes']);
  writeFileSync(join(ws, 'workspace-models', 'r2', 'moe.yml'), shared('Edited prompt'));
  const a = await nx(ws, ['show', 'projects', '--affected', '--base=HEAD']);
  assert.equal(a.exitCode, 0, a.stderr);
  assert.deepEqual(a.stdout.trim().split('\n').filter(Boolean), ['r2']);
});

test('the recipe generator writes a commented recipe that refuses to build until its placeholder prompts are replaced', async () => {
  const r = await nx(ws, ['g', './tools/executors:recipe', 'gen-moe', '--base=../../models/tiny-a', '--experts=../../models/tiny-b,../../models/tiny-c', '--gateMode=cheap_embed']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const file = join(ws, 'workspace-models', 'gen-moe', 'moe.yml');
  const text = readFileSync(file, 'utf8');
  assert.match(text, /# Routers: hidden/);
  const refused = await nx(ws, ['run', 'gen-moe:build']);
  assert.notEqual(refused.exitCode, 0);
  assert.match(refused.stdout + refused.stderr, /moe\.yml:\d+:\d+, field experts\[0\]\.positive_prompts\[0\]: still the generator's placeholder/);
  assert.doesNotMatch(refused.stdout + refused.stderr, /internal error|\n\s+at /);
  assert.ok(!existsSync(join(ws, 'dist', 'stages', 'gen-moe', 'fetch', 'models.json')));
  writeFileSync(file, text.replace(/"Replace me: a prompt typical of expert 0[^"]*"/, '"Write a python function"').replace(/"Replace me: a prompt typical of expert 1[^"]*"/, '"Solve this equation"'));
  const b = await nx(ws, ['run', 'gen-moe:build']);
  assert.equal(b.exitCode, 0, b.stdout + b.stderr);
  assert.ok(existsSync(join(ws, 'dist', 'models', 'gen-moe', 'model.safetensors.index.json')));

  // Prompts given as an option: the recipe builds at once.
  const g = await nx(ws, ['g', './tools/executors:recipe', 'gen-2', '--base=../../models/tiny-a', '--experts=../../models/tiny-b,../../models/tiny-c', '--gateMode=cheap_embed', '--prompts=Write a python function|Fix this test;Solve this equation']);
  assert.equal(g.exitCode, 0, g.stdout + g.stderr);
  assert.match(readFileSync(join(ws, 'workspace-models', 'gen-2', 'moe.yml'), 'utf8'), /- "Fix this test"/);
});
