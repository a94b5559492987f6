/**
 * Upcycling check: a DeepSeek MoE whose two routed experts and shared expert are all the base itself, each
 * down_proj halved by residual_scale 0.5, with top-2 of 2 and normalised top-k weights, computes
 * 0.5·mlp(x)·(w1 + w2) + 0.5·mlp(x) = mlp(x): the dense base's function.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { recipeYaml, tinyFamilyModel } from '../helpers/arch-models';
import { deepseekMoeHiddenStates } from '../helpers/arch-moe-forward';
import { maxAbsDiff, referenceHiddenStates } from '../helpers/forward-reference';
import { tempDir } from '../helpers/tmp';

test('DeepSeek MoE of identical experts with residual_scale 0.5 computes the dense base function', async () => {
  const dir = tempDir();
  const base = await tinyFamilyModel(join(dir, 'base'), 'llama', 5);
  const recipe = join(dir, 'moe.yml');
  writeFileSync(
    recipe,
    recipeYaml({
      base,
      gate: 'cheap_embed',
      topK: 2,
      experts: [{ model: base, prompts: ['numbers and sums'], residual: 0.5 }, { model: base, prompts: ['stories about dragons'], residual: 0.5 }],
      shared: [{ model: base, residual: 0.5 }],
    }),
  );
  const out = join(dir, 'out');
  await mergeRecipe({ recipeFile: recipe, outPath: out, modelBaseDir: dir, allowIdenticalModels: true });
  const ids = [0, 17, 250, 3, 99, 402, 8, 511, 64];
  const dense = await referenceHiddenStates(base, ids);
  const moe = await deepseekMoeHiddenStates(out, ids);
  assert.equal(moe.length, dense.length);
  for (let l = 0; l < dense.length; l++) {
    const d = maxAbsDiff(moe[l]!, dense[l]!);
    assert.ok(d < 1e-5, `hidden state ${l} differs by ${d}`);
  }

  // Control: the same merge without the shared expert's residual_scale is a different function.
  writeFileSync(recipe, recipeYaml({ base, gate: 'cheap_embed', topK: 2, experts: [{ model: base, prompts: ['numbers and sums'], residual: 0.5 }, { model: base, prompts: ['stories about dragons'], residual: 0.5 }], shared: [{ model: base }] }));
  const out2 = join(dir, 'out2');
  await mergeRecipe({ recipeFile: recipe, outPath: out2, modelBaseDir: dir, allowIdenticalModels: true });
  const moe2 = await deepseekMoeHiddenStates(out2, ids);
  assert.ok(maxAbsDiff(moe2[1]!, dense[1]!) > 1e-3, 'the forward pass sees the shared expert');
});
