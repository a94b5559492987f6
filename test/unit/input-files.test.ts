/** One reader for the YAML and JSON Lines files a user hands us: the recipe's limits and messages for all. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readRecipe } from '../../libs/recipe/parse';
import { readEvalPrompts } from '../../libs/stages/report';
import { readModelConfig } from '../../libs/model-folder/config';
import { isForgeError } from '../../libs/errors';
import { SafetensorsWeights } from '../../libs/safetensors/reader';
import { tempDir } from '../helpers/tmp';

const dir = tempDir();

async function refusal(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => assert.fail('expected an error'),
    (x: unknown) => x,
  );
  assert.ok(isForgeError(e), `a ForgeError, not ${String(e)}`);
  assert.equal(e.message.split('\n').length, 1, e.message);
  return e.message;
}

const bomb = (item: (i: number) => string) => {
  const levels = [item(0).replace('ALIASES', '"x","x","x","x","x","x","x","x","x"')];
  for (let i = 1; i < 8; i++) levels.push(item(i).replace('ALIASES', Array(9).fill(`*a${i - 1}`).join(',')));
  return levels.join('\n') + '\n';
};

test('held-out prompts with a YAML alias bomb: one line naming the file and the first alias, as for a recipe', async () => {
  const file = join(dir, 'bomb.yml');
  writeFileSync(file, bomb((i) => `- {expert: 0, prompts: &a${i} [ALIASES]}`));
  assert.match(await refusal(readEvalPrompts(file, 2)), /bomb\.yml:2:\d+: too many aliases: the YAML's anchors and aliases expand beyond what a held-out prompts file needs/);
  const recipe = join(dir, 'bomb-recipe.yml');
  writeFileSync(recipe, bomb((i) => `a${i}: &a${i} [ALIASES]`));
  assert.match(await refusal(readRecipe(recipe)), /bomb-recipe\.yml:2:\d+: too many aliases: the YAML's anchors and aliases expand beyond what a recipe needs/);
});

test('a UTF-8 byte order mark is accepted before a YAML list, a JSON Lines line and a recipe', async () => {
  const yml = join(dir, 'bom.yml');
  writeFileSync(yml, '\ufeff- expert: 1\n  prompts: ["a dragon tale"]\n');
  assert.deepEqual(await readEvalPrompts(yml, 2), [{ expert: 1, prompt: 'a dragon tale' }]);
  const jsonl = join(dir, 'bom.jsonl');
  writeFileSync(jsonl, '\ufeff{"expert": 0, "prompt": "sort a list"}\n{"expert": 1, "prompt": "once upon a time"}\n');
  assert.deepEqual(await readEvalPrompts(jsonl, 2), [{ expert: 0, prompt: 'sort a list' }, { expert: 1, prompt: 'once upon a time' }]);
  const recipe = join(dir, 'bom-recipe.yml');
  writeFileSync(recipe, '\ufeffbase_model: m/base\nexperts:\n  - source_model: m/a\n    positive_prompts: ["x"]\n');
  const parsed = await readRecipe(recipe);
  assert.equal(parsed.recipe.base_model, 'm/base');
  assert.ok(parsed.text.startsWith('\ufeff'), 'the text as read (copied to the output unchanged)');
});

test('a FIFO, /dev/null or a folder in place of a recipe, held-out prompts or config.json: "is not a regular file", no hang', { timeout: 20_000 }, async () => {
  const fifo = join(dir, 'fifo.yml');
  execFileSync('mkfifo', [fifo]);
  const folder = join(dir, 'folder.jsonl');
  mkdirSync(folder);
  // No writer ever opens the FIFO: a reader that waited for one would hang here until the test runner's timeout.
  assert.match(await refusal(readEvalPrompts(fifo, 2)), /fifo\.yml: the held-out prompts file is not a regular file \(a FIFO\)$/);
  assert.match(await refusal(readRecipe(fifo)), /fifo\.yml: the recipe is not a regular file \(a FIFO\)$/);
  assert.match(await refusal(readEvalPrompts('/dev/null', 2)), /^\/dev\/null: the held-out prompts file is not a regular file \(a character device\)$/);
  assert.match(await refusal(readRecipe('/dev/null')), /^\/dev\/null: the recipe is not a regular file \(a character device\)$/);
  assert.match(await refusal(readEvalPrompts(folder, 2)), /folder\.jsonl: the held-out prompts file is not a regular file \(a folder\)$/);
  const model = join(dir, 'model');
  mkdirSync(model);
  execFileSync('mkfifo', [join(model, 'config.json')]);
  assert.match(await refusal(readModelConfig(model)), /config\.json: the config\.json is not a regular file \(a FIFO\)$/);
  // A model folder's other JSON files go through the same reader.
  const index = join(model, 'model.safetensors.index.json');
  execFileSync('mkfifo', [index]);
  assert.match(await refusal(SafetensorsWeights.openIndex(model, index)), /index\.json: the model\.safetensors\.index\.json is not a regular file \(a FIFO\)$/);
});
