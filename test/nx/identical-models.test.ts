/**
 * An option given on the command line reaches every stage that reads it: allowIdenticalModels is checked again by
 * each stage that opens the merge context (fetch to report), and the recipe stage hands it to each through its slice.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';

const ws = throwawayWorkspace();
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
// uniform_random: the reference's checks apply (random skips them), and no forward pass builds the gates.
addRecipe(ws, 'same', 'base_model: ../../models/tiny-a\ngate_mode: uniform_random\nexperts:\n  - source_model: ../../models/tiny-b\n    positive_prompts: ["abc"]\n  - source_model: ../../models/tiny-b\n    positive_prompts: ["xyz"]\n');

test('experts of one model are refused, and built with --allowIdenticalModels through every stage', async () => {
  const refused = await nx(ws, ['run', 'same:build']);
  assert.notEqual(refused.exitCode, 0);
  assert.match(refused.stdout + refused.stderr, /All of your expert models are the same/);
  const built = await nx(ws, ['run', 'same:build', '--allowIdenticalModels']);
  assert.equal(built.exitCode, 0, built.stdout + built.stderr);
});
