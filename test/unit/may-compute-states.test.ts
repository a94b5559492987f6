import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expectedMisses, mayComputeStates, previousRecipe } from '../../libs/pipeline';
import { parseRecipeText } from '../../libs/recipe';

const recipe = (base: string, mode: string, experts: [string, string[]][]) =>
  `base_model: ${base}\ngate_mode: ${mode}\nexperts:\n${experts.map(([m, ps]) => `  - source_model: ${m}\n    positive_prompts:\n${ps.map((p) => `      - "${p}"`).join('\n')}`).join('\n')}\n`;

test('a run may compute states unless the folder was built from the same base and gate mode with each of its prompts and their experts', async () => {
  const out = mkdtempSync(join(tmpdir(), 'moe-forge-may-'));
  try {
    const built = recipe('org/a', 'hidden', [['org/a', ['math', 'code']], ['org/b', ['poems']]]);
    const now = (text: string) => parseRecipeText(text, join(out, 'moe.yml')).recipe;
    assert.equal(mayComputeStates(now(built), await previousRecipe(out)), true, 'nothing built here yet');
    writeFileSync(join(out, 'mergekit_moe_config.yml'), built);
    assert.equal(mayComputeStates(now(built), await previousRecipe(out)), false, 'the same prompts');
    assert.equal(mayComputeStates(now(recipe('org/a', 'hidden', [['org/a', ['math']], ['org/b', ['poems']]])), await previousRecipe(out)), false, 'a prompt removed');
    assert.equal(mayComputeStates(now(recipe('org/a', 'hidden', [['org/a', ['math', 'code', 'sql']], ['org/b', ['poems']]])), await previousRecipe(out)), true, 'a prompt added');
    assert.equal(mayComputeStates(now(recipe('org/a', 'hidden', [['org/b', ['math', 'code']], ['org/a', ['poems']]])), await previousRecipe(out)), true, 'prompts moved to another expert (fit states depend on it)');
    assert.equal(mayComputeStates(now(recipe('org/b', 'hidden', [['org/a', ['math', 'code']], ['org/b', ['poems']]])), await previousRecipe(out)), true, 'another base');
    assert.equal(mayComputeStates(now(recipe('org/a', 'fit', [['org/a', ['math', 'code']], ['org/b', ['poems']]])), await previousRecipe(out)), true, 'another gate mode');
    writeFileSync(join(out, 'mergekit_moe_config.yml'), 'experts: [');
    assert.equal(mayComputeStates(now(built), await previousRecipe(out)), true, 'a copy that does not parse');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('the prompts a hidden-state run is expected to compute: those the folder was not built from with the same base and gate mode, all of them with --recompute', async () => {
  const out = mkdtempSync(join(tmpdir(), 'moe-forge-may-'));
  try {
    const now = (text: string) => parseRecipeText(text, join(out, 'moe.yml')).recipe;
    const built = recipe('org/a', 'hidden', [['org/a', ['math', 'code']], ['org/b', ['poems', 'math']]]);
    assert.deepEqual(expectedMisses(now(built), await previousRecipe(out), false), ['math', 'code', 'poems'], 'nothing built here: every prompt, each once');
    writeFileSync(join(out, 'mergekit_moe_config.yml'), built);
    const before = await previousRecipe(out);
    assert.deepEqual(expectedMisses(now(built), before, false), [], 'the same prompts');
    assert.deepEqual(expectedMisses(now(built), before, true), ['math', 'code', 'poems'], '--recompute');
    // Hidden states depend on the base and the text alone: a prompt moved to another expert is not computed again.
    assert.deepEqual(expectedMisses(now(recipe('org/a', 'hidden', [['org/b', ['math', 'sql']], ['org/a', ['poems']]])), before, false), ['sql']);
    assert.deepEqual(expectedMisses(now(recipe('org/b', 'hidden', [['org/a', ['math']], ['org/b', ['poems']]])), before, false), ['math', 'poems'], 'another base');
    assert.deepEqual(expectedMisses(now(recipe('org/a', 'cheap_embed', [['org/a', ['math']], ['org/b', ['poems']]])), before, false), ['math', 'poems'], 'another gate mode');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
