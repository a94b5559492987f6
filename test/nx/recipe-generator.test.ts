/** The recipe generator, called in-process on Nx's virtual tree as Nx tests its own generators. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createTreeWithEmptyWorkspace } from '@nx/devkit/testing';
import recipeGenerator from '../../tools/executors/recipe/generator';
import { ROOT } from '../helpers/tmp';

test('the generator checks its models: a folder relative to the recipe that exists, or a Hugging Face id', async () => {
  const tree = createTreeWithEmptyWorkspace();
  tree.write('models/tiny-a/config.json', '{}');
  tree.write('models/tiny-b/config.json', '{}');
  await recipeGenerator(tree, { name: 'ok', base: '../../models/tiny-a', experts: '../../models/tiny-b, org/expert@main' });
  assert.match(tree.read('workspace-models/ok/moe.yml', 'utf8')!, /base_model: "\.\.\/\.\.\/models\/tiny-a"/);
  await assert.rejects(
    recipeGenerator(tree, { name: 'typo', base: '../../models/tiny-z', experts: '../../models/tiny-b' }),
    /^Error: --base: "\.\.\/\.\.\/models\/tiny-z" is neither a folder \(relative to workspace-models\/typo\/, the recipe's folder\) nor a Hugging Face id org\/name\[@revision\]$/,
  );
  await assert.rejects(recipeGenerator(tree, { name: 'typo2', base: '../../models/tiny-a', experts: '../../models/tiny-a/config.json' }), /--experts: ".*config\.json" is neither a folder/);
  assert.ok(!tree.exists('workspace-models/typo/moe.yml'));
});

test('every gate mode gets a recipe that passes the checks: prompts left out only where the mode needs none', async () => {
  const tree = createTreeWithEmptyWorkspace();
  tree.write('models/a/config.json', '{}');
  for (const gateMode of ['hidden', 'cheap_embed', 'random', 'uniform_random'] as const) {
    await recipeGenerator(tree, { name: `m-${gateMode}`, base: '../../models/a', experts: 'org/x,org/y', gateMode });
    const text = tree.read(`workspace-models/m-${gateMode}/moe.yml`, 'utf8')!;
    assert.equal(/positive_prompts:/.test(text), gateMode !== 'random', gateMode);
  }
});

test("the generator's schema has a description, so its --help says what it does", () => {
  const schema = JSON.parse(readFileSync(join(ROOT, 'tools', 'executors', 'recipe', 'schema.json'), 'utf8'));
  assert.match(schema.description, /^Create workspace-models\/<name>\/moe\.yml/);
});
