import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mayComputeStates } from '../../libs/pipeline';
import { parseRecipeText } from '../../libs/recipe';

const recipe = (base: string, mode: string, experts: [string, string[]][]) =>
  `base_model: ${base}\ngate_mode: ${mode}\nexperts:\n${experts.map(([m, ps]) => `  - source_model: ${m}\n    positive_prompts:\n${ps.map((p) => `      - "${p}"`).join('\n')}`).join('\n')}\n`;

test('a run may compute states unless the folder was built from the same base and gate mode with each of its prompts and their experts', async () => {
  const out = mkdtempSync(join(tmpdir(), 'moe-forge-may-'));
  try {
    const built = recipe('org/a', 'hidden', [['org/a', ['math', 'code']], ['org/b', ['poems']]]);
    const now = (text: string) => parseRecipeText(text, join(out, 'moe.yml')).recipe;
    assert.equal(await mayComputeStates(now(built), out), true, 'nothing built here yet');
    writeFileSync(join(out, 'mergekit_moe_config.yml'), built);
    assert.equal(await mayComputeStates(now(built), out), false, 'the same prompts');
    assert.equal(await mayComputeStates(now(recipe('org/a', 'hidden', [['org/a', ['math']], ['org/b', ['poems']]])), out), false, 'a prompt removed');
    assert.equal(await mayComputeStates(now(recipe('org/a', 'hidden', [['org/a', ['math', 'code', 'sql']], ['org/b', ['poems']]])), out), true, 'a prompt added');
    assert.equal(await mayComputeStates(now(recipe('org/a', 'hidden', [['org/b', ['math', 'code']], ['org/a', ['poems']]])), out), true, 'prompts moved to another expert (fit states depend on it)');
    assert.equal(await mayComputeStates(now(recipe('org/b', 'hidden', [['org/a', ['math', 'code']], ['org/b', ['poems']]])), out), true, 'another base');
    assert.equal(await mayComputeStates(now(recipe('org/a', 'fit', [['org/a', ['math', 'code']], ['org/b', ['poems']]])), out), true, 'another gate mode');
    writeFileSync(join(out, 'mergekit_moe_config.yml'), 'experts: [');
    assert.equal(await mayComputeStates(now(built), out), true, 'a copy that does not parse');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
