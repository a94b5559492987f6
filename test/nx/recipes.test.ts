import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { assertMatchesManifest, manifest } from '../helpers/manifest';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';

const ws = throwawayWorkspace();
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
// Relative model paths in an Nx recipe resolve against the recipe's folder.
const recipe = readFileSync(join(FIXTURES, 'parity', 'mixtral-cheap_embed.yml'), 'utf8').replace(/\.\.\/tiny-llama\//g, '../../models/');
addRecipe(ws, 'parity', recipe);
addRecipe(ws, 'custom', recipe, { targets: { write: { options: { outputPath: 'out/custom-model', layout: 'fused' } }, 'assemble-experts': { options: { layout: 'fused' } } } });

test('a recipe folder is an Nx project with the stages of the pipeline table, build and watch, each described', async () => {
  const r = await nx(ws, ['show', 'project', 'parity', '--json']);
  assert.equal(r.exitCode, 0, r.stderr + r.stdout);
  const p = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(p.targets).sort(), ['assemble-experts', 'build', 'build-gates', 'check-options', 'embed-prompts', 'fetch', 'recipe', 'report', 'watch', 'write']);
  const check = { target: 'check-options', params: 'forward' };
  // Command-line options reach the recipe stage, which hands each stage its own (see test/nx/cache-keys.test.ts).
  const recipe = { target: 'recipe', params: 'forward' };
  // The report runs the merged model that assemble-experts planned; write puts the report's page in the folder.
  assert.deepEqual(p.targets.write.dependsOn, [check, recipe, { target: 'report', params: 'ignore' }]);
  assert.deepEqual(p.targets.report.dependsOn, [check, recipe, { target: 'assemble-experts', params: 'ignore' }]);
  assert.deepEqual(p.targets['assemble-experts'].dependsOn, [check, recipe, { target: 'build-gates', params: 'ignore' }]);
  for (const t of Object.values<{ metadata?: { description?: string } }>(p.targets)) assert.ok(t.metadata?.description);
});

test('nx run parity:build reproduces the reference merge; a second run is served from the Nx cache', async () => {
  const r = await nx(ws, ['run', 'parity:build']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  await assertMatchesManifest(join(ws, 'dist', 'models', 'parity'), manifest('mixtral-cheap_embed.classic.manifest.json'), 1e-6);
  const again = await nx(ws, ['run', 'parity:build']);
  assert.equal(again.exitCode, 0, again.stdout);
  assert.match(again.stdout, /embed-prompts\s+\[local cache\]/);
  // write too: its input is the plan and a token for "the folder is as written", not the folder (test/nx/noop.test.ts).
  assert.match(again.stdout, /nx run parity:write\s+\[local cache\]/);
  // A cached stage replays what the result is, not the shards a past run wrote.
  assert.doesNotMatch(again.stdout, /writing model-/);
});

test('options forwarded from the command line and set in project.json reach the stages', async () => {
  const r = await nx(ws, ['run', 'parity:build', '--layout=fused', '--outputPath=out/fused']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  await assertMatchesManifest(join(ws, 'out', 'fused'), manifest('mixtral-cheap_embed.fused.manifest.json'), 1e-6);
  const c = await nx(ws, ['run', 'custom:build']);
  assert.equal(c.exitCode, 0, c.stdout + c.stderr);
  await assertMatchesManifest(join(ws, 'out', 'custom-model'), manifest('mixtral-cheap_embed.fused.manifest.json'), 1e-6);
});

test('a bad recipe fails its fetch stage with the message and no output', async () => {
  addRecipe(ws, 'broken', recipe.replace('experts_per_token: 2', 'experts_per_tokn: 2'));
  const r = await nx(ws, ['run', 'broken:build']);
  assert.notEqual(r.exitCode, 0);
  assert.match(r.stdout + r.stderr, /moe\.yml:4:1, field experts_per_tokn: unknown key "experts_per_tokn" \(did you mean "experts_per_token"\?\)/);
  assert.ok(!existsSync(join(ws, 'dist', 'models', 'broken')));
});
