import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { copyModel, tempDir, TINY } from '../helpers/tmp';
import { nowNs, RACY_NS, sleepUntil } from '../../libs/util/stat-key';
// fetch's runtime input: its memo and shell script, and the code it runs (model-ids/impl.ts).
import { answer, fromMemo } from '../../tools/executors/model-ids';
import { scriptPath } from '../../tools/executors/fast-input';
import modelIds from '../../tools/executors/model-ids/impl';

const ws = tempDir('moe-forge-model-ids-');
const model = copyModel(TINY('a'), join(ws, 'models', 'tiny-a'));
mkdirSync(join(ws, 'workspace-models', 'n'), { recursive: true });
const recipe = join(ws, 'workspace-models', 'n', 'moe.yml');
writeFileSync(recipe, 'base_model: ../../models/tiny-a\nexperts:\n  - source_model: ../../models/tiny-a\n    positive_prompts: ["x"]\n');
const args = [recipe];
const PAST = new Date('2024-01-01T00:00:00Z');
for (const f of readdirSync(model)) utimesSync(join(model, f), PAST, PAST);
const settle = () => sleepUntil(nowNs() + RACY_NS);
const script = () => spawnSync('sh', [join(ws, scriptPath('model-ids', args))], { cwd: ws, encoding: 'utf8' });

test('a model file edited while its id is computed is not memoised as the new stats with the old id: the memo and the script give the new id', async () => {
  settle();
  const before = (await modelIds(args)).text;
  // The edit lands after the file was hashed, before the runtime input looks at the stats: same size, mtime set back.
  const file = join(model, 'tokenizer_config.json');
  let edited = false;
  const compute = async (a: string[]) => {
    const r = await modelIds(a);
    if (!edited) {
      edited = true;
      const text = readFileSync(file, 'utf8');
      writeFileSync(file, text.slice(0, -1) + (text.endsWith(' ') ? '\n' : ' '));
      utimesSync(file, PAST, PAST);
      settle(); // past the racy window: the memo is written, and must hold the new id
    }
    return r;
  };
  const got = await answer(ws, args, compute);
  const now = (await modelIds(args)).text;
  assert.notEqual(now, before, 'the edit changed the id');
  assert.equal(got, now, 'the answer is the id of the file as it is');
  assert.equal(fromMemo(ws, args)?.text, now, 'the memo holds the new id');
  assert.deepEqual({ code: script().status, stdout: script().stdout }, { code: 0, stdout: now }, 'and so does the script');
});

test('a model file replaced with cp -p (same size, same mtime) stops the memo and the script: the next answer is the new id', async () => {
  settle();
  const first = await answer(ws, args, modelIds);
  assert.equal(fromMemo(ws, args)?.text, first);
  assert.equal(script().status, 0);
  const file = join(model, 'config.json');
  const text = readFileSync(file, 'utf8');
  const copy = join(ws, 'config.json');
  writeFileSync(copy, text.replace('"llama"', '"LLAMA"'));
  utimesSync(copy, PAST, PAST);
  spawnSync('cp', ['-p', copy, file]);
  assert.equal(fromMemo(ws, args), null, 'the memo misses');
  assert.equal(script().status, 1, 'the script does not answer');
  settle();
  const second = await answer(ws, args, modelIds);
  assert.notEqual(second, first);
  assert.equal(fromMemo(ws, args)?.text, second);
});
