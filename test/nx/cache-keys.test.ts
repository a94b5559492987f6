/**
 * Cache keys as fine as the work (issue #21 item 7): each stage's key holds what it reads, as the pipeline table
 * declares it (libs/pipeline/table.ts), so an edit re-runs the stages whose inputs it changes and no other.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, openSync, readFileSync, readSync, statSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';

const ws = throwawayWorkspace('moe-forge-ws-keys-');
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
addRecipe(
  ws,
  'k',
  `base_model: ../../models/tiny-a
gate_mode: hidden
dtype: float32
experts:
  - source_model: ../../models/tiny-a
    positive_prompts: ["How do I merge two models with mergekit?"]
  - source_model: ../../models/tiny-b
    positive_prompts: ["Write a python function that adds numbers"]
`,
);
const recipeFile = join(ws, 'workspace-models', 'k', 'moe.yml');
const STAGES = ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report', 'write'] as const;
type Ran = Record<(typeof STAGES)[number], 'run' | 'cache'>;

/** Which stages ran and which Nx restored from its cache, read from Nx's own output. */
async function build(args: string[] = []): Promise<Ran> {
  const r = await nx(ws, ['run', 'k:build', ...args]);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const ran = {} as Ran;
  for (const s of STAGES) {
    const line = r.stdout.split('\n').find((l) => new RegExp(`nx run k:${s}(\\s|$)`).test(l));
    assert.ok(line, `${s} appears in the output:\n${r.stdout}`);
    ran[s] = /\[(local|remote) cache\]|existing outputs match the cache/.test(line) ? 'cache' : 'run';
  }
  return ran;
}

const cached = (ran: Ran) => STAGES.filter((s) => ran[s] === 'cache');

test('each stage re-runs on what it reads only: prompts, an expert\'s weights, the shard size, a comment', async () => {
  await build();
  assert.deepEqual(cached(await build()), [...STAGES], 'a no-op build is all cache hits');

  // A prompt added: the models are as they were, so fetch (which resolves them) stays cached.
  writeFileSync(recipeFile, readFileSync(recipeFile, 'utf8').replace('"Write a python function that adds numbers"]', '"Write a python function that adds numbers", "Fix this failing unit test"]'));
  const prompt = await build();
  assert.equal(prompt.fetch, 'cache');
  assert.equal(prompt['embed-prompts'], 'run');
  assert.equal(prompt['build-gates'], 'run');

  // An expert's weights changed in place (the last byte of its only shard): prompt states depend on the base,
  // the prompts and the mode only, so embed-prompts stays cached while fetch resolves the new content.
  const shard = join(ws, 'models', 'tiny-b', 'model.safetensors');
  const fd = openSync(shard, 'r+');
  const last = Buffer.alloc(1);
  readSync(fd, last, 0, 1, statSync(shard).size - 1);
  writeSync(fd, Buffer.from([last[0]! ^ 0x01]), 0, 1, statSync(shard).size - 1);
  closeSync(fd);
  const weights = await build();
  assert.equal(weights.fetch, 'run');
  assert.equal(weights['embed-prompts'], 'cache');
  assert.equal(weights['assemble-experts'], 'run');
  assert.equal(weights.write, 'run');

  // A shard size on the command line changes the plan and the files, not the routers; the report runs the model
  // the plan describes (the plan holds the shard split too), so it runs again.
  const shards = await build(['--outShardSize=100000']);
  assert.deepEqual(cached(shards), ['fetch', 'embed-prompts', 'build-gates']);

  // A comment in the recipe: only write, which copies the recipe's text into the model folder, runs.
  writeFileSync(recipeFile, `# routers from two prompts\n${readFileSync(recipeFile, 'utf8')}`);
  const comment = await build(['--outShardSize=100000']);
  assert.deepEqual(cached(comment), ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report']);
  assert.match(readFileSync(join(ws, 'dist', 'models', 'k', 'mergekit_moe_config.yml'), 'utf8'), /^# routers from two prompts/);
});
