/** forwardPrecision int8: onnxruntime's MatMulNBits on 8-bit blocks, opt-in, cached apart from the exact states. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { computeAllHiddenStates, computePromptStates } from '../../libs/forward';
import { quantizeInt8 } from '../../libs/forward/run';
import { normalize } from '../../libs/gates';
import { readRecipe } from '../../libs/recipe/parse';
import { runFetch } from '../../libs/stages/fetch';
import { runEmbedPrompts } from '../../libs/stages/embed-prompts';
import { padStateKey, promptStateKey } from '../../libs/prompt-cache';
import { cliFlags, cliStageOptions, parseStageOptions } from '../../libs/options';
import { parseArgs } from '../../libs/cli/args';
import { describeError } from '../../libs/errors';
import { maxAbsDiff } from '../helpers/forward-reference';
import { TINY, tempDir } from '../helpers/tmp';

const PROMPTS = [[0, 42, 506, 359, 81, 393, 7, 7, 12], [0, 9], [0, 300, 301, 17, 18]];

test('quantizeInt8: per block of K, scale = max|w|/127 and q = round(w/scale) + 128, an all-zero block with scale 0', () => {
  const w = Float32Array.from([0.5, -1, 0.25, 0, 0, 0, 0, 0, 2, 1, -2, 0.01, 0, 0, 0, 0]);
  const q = new Uint8Array(16), s = new Float32Array(4);
  quantizeInt8(w, 2, 8, 4, q, s);
  assert.deepEqual([...s], [Math.fround(1 / 127), 0, Math.fround(2 / 127), 0]);
  assert.deepEqual([...q], [192, 1, 160, 128, 128, 128, 128, 128, 255, 192, 1, 129, 128, 128, 128, 128]);
});

test('int8 states are within 2% of the largest fp32 state per layer, and normalised gate rows within 5e-3 (hidden 64: row entries ~0.1; the bench measures TinyLlama shape)', async () => {
  const exact = await computeAllHiddenStates(TINY('a'), PROMPTS);
  const int8 = await computeAllHiddenStates(TINY('a'), PROMPTS, { precision: 'int8' });
  let changed = 0;
  for (let p = 0; p < PROMPTS.length; p++) {
    for (let e = 0; e < exact[p]!.length; e++) {
      const a = exact[p]![e]!, b = int8[p]![e]!;
      const d = maxAbsDiff(a, b);
      changed += d;
      const scale = a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      assert.ok(d <= 0.02 * scale, `prompt ${p} entry ${e}: ${d} against largest ${scale}`);
    }
  }
  assert.ok(changed > 0, 'int8 ran: its states are not the exact ones');
  // Gate rows are normalised states (hidden mode): the last token's and the mean, per prompt and layer input.
  const a = await computePromptStates(TINY('a'), PROMPTS);
  const b = await computePromptStates(TINY('a'), PROMPTS, { precision: 'int8' });
  for (let p = 0; p < PROMPTS.length; p++) {
    for (let l = 0; l < a[p]!.length; l++) {
      for (const pick of ['last', 'sum'] as const) {
        const d = maxAbsDiff(Float32Array.from(normalize(Float64Array.from(a[p]![l]![pick]))), Float32Array.from(normalize(Float64Array.from(b[p]![l]![pick]))));
        assert.ok(d <= 5e-3, `prompt ${p} layer ${l} ${pick}: ${d}`);
      }
    }
  }
});

test('forwardPrecision: int8 prompt states never satisfy an fp32 request (own cache keys); fp32 keys are unchanged', async () => {
  assert.equal(promptStateKey('b', 't', 'x', 3, 'fp32'), promptStateKey('b', 't', 'x', 3));
  assert.notEqual(promptStateKey('b', 't', 'x', 3, 'int8'), promptStateKey('b', 't', 'x', 3));
  assert.notEqual(padStateKey('b', 2, 'int8'), padStateKey('b', 2));
  const ws = tempDir();
  const recipeFile = join(ws, 'moe.yml');
  writeFileSync(recipeFile, `base_model: ${TINY('a')}\ngate_mode: hidden\nexperts:\n  - source_model: ${TINY('a')}\n    positive_prompts: ["How do I merge two models?"]\n  - source_model: ${TINY('b')}\n    positive_prompts: ["Once upon a time"]\n`);
  const cacheDir = join(ws, '.moe-cache');
  const { merge } = await runFetch(await readRecipe(recipeFile), join(ws, 'fetch'), { cacheDir, modelBaseDir: ws, root: ws });
  const run = (forwardPrecision?: 'fp32' | 'int8') => runEmbedPrompts(merge, join(ws, `embed-${forwardPrecision}`), { cacheDir, forwardPrecision });
  assert.deepEqual([(await run('fp32')).computed, (await run('fp32')).fromCache], [2, 2]);
  const first = await run('int8');
  assert.deepEqual([first.computed, first.fromCache], [2, 0], 'the fp32 entries do not answer int8');
  assert.deepEqual((await run('int8')).fromCache, 2);
  assert.equal((await run()).fromCache, 2, 'the default is fp32, still cached');
});

test('forwardPrecision: a bad value is refused by name on both front ends; fp32 is the default', () => {
  assert.equal(parseStageOptions({}).forwardPrecision, 'fp32');
  assert.equal(cliStageOptions(parseArgs(['--forward-precision', 'int8'], cliFlags()).values).forwardPrecision, 'int8');
  const line = 'field --forward-precision: --forward-precision must be fp32, int8 or bf16, got "int4"';
  assert.throws(() => parseStageOptions({ forwardPrecision: 'int4' }), (e) => describeError(e) === line);
  assert.throws(() => cliStageOptions(parseArgs(['--forward-precision', 'int4'], cliFlags()).values), (e) => describeError(e) === line);
});
