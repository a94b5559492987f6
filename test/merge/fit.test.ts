/**
 * gate_mode fit through the command and the library: the written routers send the prompts' own tokens to their
 * experts at the calibrated confidence; an added prompt costs one prompt's forward pass; bad options are refused
 * in one line naming the field.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { SafetensorsWeights, readTensorBytes, decodeFloats } from '../../libs/safetensors';
import { computeRouterInputs } from '../../libs/forward';
import { loadTokenizer } from '../../libs/tokenizer';
import { mergekitMoe } from '../helpers/cli';
import { tempDir, TINY } from '../helpers/tmp';

const d = tempDir();
// Disjoint letters per expert, so that every token (the shared BOS aside) has one right expert.
const PROMPTS = [
  ['abcabc cab', 'bad cab bead', 'dab ace cede'],
  ['xyz zyx yzx', 'wxy yxw', 'vwx xwv zzz'],
];

const recipe = (extra: string, prompts = PROMPTS, mode = 'fit') => `base_model: ${TINY('a')}
gate_mode: ${mode}
${extra}experts:
  - source_model: ${TINY('b')}
    positive_prompts: ${JSON.stringify(prompts[0])}
  - source_model: ${TINY('c')}
    positive_prompts: ${JSON.stringify(prompts[1])}
`;

async function routers(out: string): Promise<Float32Array[]> {
  const w = await SafetensorsWeights.openFolder(out);
  return [0, 1].map((l) => w.get(`model.layers.${l}.block_sparse_moe.gate.weight`)).map((loc) => {
    assert.deepEqual(loc.shape, [2, 64]);
    return loc;
  }).reduce(async (acc, loc) => [...(await acc), decodeFloats(await readTensorBytes(loc), loc.dtype)], Promise.resolve([] as Float32Array[]));
}

/**
 * Over every token but the BOS of each prompt and every layer, on the states the fit is made on (the base's
 * attention with the prompt's expert's MLPs): share routed top-1 to its own expert, mean top-1 probability.
 */
async function routeTraining(gates: Float32Array[], prompts = PROMPTS): Promise<{ own: number; confidence: number }> {
  const tok = await loadTokenizer(TINY('a'));
  const texts = prompts.flatMap((ps, e) => ps.map((t) => ({ ids: tok.encodePrompt(t), e })));
  const states: Float32Array[][] = [];
  for (const [e, model] of [TINY('b'), TINY('c')].entries()) {
    const mine = texts.filter((t) => t.e === e);
    states.push(...(await computeRouterInputs(TINY('a'), mine.map((t) => t.ids), { mlpFrom: model })));
  }
  let own = 0, conf = 0, n = 0;
  texts.forEach((t, i) => {
    for (let l = 0; l < 2; l++) {
      const x = states[i]![l]!;
      for (let p = 1; p < t.ids.length; p++) {
        const z = [0, 1].map((e) => gates[l]!.subarray(e * 64, (e + 1) * 64).reduce((a, w, h) => a + w * x[p * 64 + h]!, 0));
        const best = z[0]! >= z[1]! ? 0 : 1;
        own += best === t.e ? 1 : 0;
        conf += 1 / (1 + Math.exp(-Math.abs(z[0]! - z[1]!)));
        n++;
      }
    }
  });
  return { own: own / n, confidence: conf / n };
}

test('the command builds a fit recipe whose routers send the prompts\' tokens to their experts, at the calibrated confidence', async () => {
  const f = join(d, 'fit.yml');
  writeFileSync(f, recipe('fit_confidence: 0.8\n'));
  const r = await mergekitMoe([f, join(d, 'out-fit')], d);
  assert.equal(r.exitCode, 0, r.stderr);
  const fit = await routeTraining(await routers(join(d, 'out-fit')));
  assert.ok(fit.own >= 0.95, `own expert first for ${fit.own}`);
  // Calibrated on the fitted tokens (the BOS, shared by all, left out): within float32 rounding of the gates.
  assert.ok(Math.abs(fit.confidence - 0.8) < 1e-3, `mean top-1 probability ${fit.confidence}`);
  // The mergekit mode on the same prompts does worse on their own tokens: fit is not hidden under another name.
  const h = join(d, 'hidden.yml');
  writeFileSync(h, recipe('', PROMPTS, 'hidden'));
  assert.equal((await mergekitMoe([h, join(d, 'out-hidden')], d)).exitCode, 0);
  const hidden = await routeTraining(await routers(join(d, 'out-hidden')));
  assert.ok(fit.own > hidden.own, `fit ${fit.own} vs hidden ${hidden.own}`);
});

test('per-prompt router inputs are cached by content: unchanged → 0 computed, one prompt added or edited → 1, and the routers follow it', async () => {
  const cacheDir = join(d, 'cache-inc');
  const f = join(d, 'inc.yml');
  const run = async (prompts: string[][], out: string) => {
    writeFileSync(f, recipe('', prompts));
    const lines: string[] = [];
    await mergeRecipe({ recipeFile: f, outPath: join(d, out), modelBaseDir: d, cacheDir, overwrite: true, log: (l) => lines.push(l) });
    const [, computed, cached] = /prompt states: (\d+) computed, (\d+) from cache/.exec(lines.join('\n'))!;
    return { computed: Number(computed), cached: Number(cached), gates: await routers(join(d, out)) };
  };
  const cold = await run(PROMPTS, 'inc-1');
  assert.deepEqual([cold.computed, cold.cached], [6, 0]);
  const again = await run(PROMPTS, 'inc-2');
  assert.deepEqual([again.computed, again.cached], [0, 6]);
  assert.deepEqual(again.gates, cold.gates);
  const added = [[...PROMPTS[0]!, 'face bed dace'], PROMPTS[1]!];
  const plus = await run(added, 'inc-3');
  assert.deepEqual([plus.computed, plus.cached], [1, 6]);
  assert.notDeepEqual(plus.gates, cold.gates);
  assert.ok((await routeTraining(plus.gates, added)).own >= 0.95);
  // An edited prompt is a new prompt: only it is computed.
  const edited = [[...PROMPTS[0]!, 'face bed cafe'], PROMPTS[1]!];
  const edit = await run(edited, 'inc-4');
  assert.deepEqual([edit.computed, edit.cached], [1, 6]);
});

test('bad fit options are refused in one line naming the field', async () => {
  const cases: [string, string, RegExp][] = [
    ['fit_lambda: -1\n', 'fit', /field fit_lambda: must be a number > 0$/],
    ['fit_confidence: 1.5\n', 'fit', /field fit_confidence: must be a number in \(0, 1\)$/],
    ['fit_confidence: 0.5\n', 'fit', /field fit_confidence: fit_confidence 0.5 must be more than 1\/2, the top-1 probability of a uniform router over the 2 experts$/],
    ['fit_states: merged\n', 'fit', /field fit_states: .*expert.*base/],
    ['fit_lambda: 0.5\n', 'hidden', /field fit_lambda: fit_lambda is an option of gate_mode fit only \(gate_mode is hidden\)$/],
  ];
  for (const [extra, mode, want] of cases) {
    const f = join(d, 'bad.yml');
    writeFileSync(f, recipe(extra, PROMPTS, mode));
    const r = await mergekitMoe([f, join(d, 'out-bad')], d);
    assert.notEqual(r.exitCode, 0, extra);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, new RegExp(`^error: ${f.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:3:\\d+, `));
    assert.match(lines[0]!, want);
  }
});
