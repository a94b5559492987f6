/**
 * The report's per-token router logits are the merged model's: the same texts through the WRITTEN model in
 * transformers (output_router_logits=True, recorded by test/fixtures/router-logits/record.ts) agree within float
 * tolerance, layer by layer, for Mixtral (bf16 classic; fused with a base sliding window it must not use),
 * Qwen2-MoE (gated shared expert) and Qwen3-MoE (q/k norms); DeepSeek MoE (remote code in transformers) against the
 * plain float64 forward of test/helpers/arch-moe-forward.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROUTER_CASES, buildCase, writeCase, type RouterCase } from '../helpers/router-cases';
import { recipeYaml, tinyFamilyModel } from '../helpers/arch-models';
import { deepseekMoeHiddenStates } from '../helpers/arch-moe-forward';
import { mergedRouterLogits } from '../../libs/stages/report';
import { FIXTURES, tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-merged-routing-');

interface Recorded {
  weights: string;
  texts: string[];
  ids: number[][];
  logits: number[][][];
}

for (const c of ROUTER_CASES) {
  test(`${c.name}: every token's router logits in every layer match transformers on the written model`, async () => {
    const rec = JSON.parse(readFileSync(join(FIXTURES, 'router-logits', `${c.name}.json`), 'utf8')) as Recorded;
    const built = await buildCase(c, join(dir), join(dir, 'cache'));
    // The model written from this plan is the one recorded (else re-record: the merge itself changed).
    assert.equal(await writeCase(built, join(dir, `${c.name}-model`)), rec.weights, 'written weights differ from the recorded model');
    const ours = await mergedRouterLogits(built.merge, built.planDir, rec.texts);
    assert.deepEqual(ours.ids, rec.ids, 'token ids');
    let worst = 0, scale = 0, n = 0;
    for (const [i, layers] of rec.logits.entries()) {
      assert.equal(ours.logits[i]!.length, layers.length, 'layers');
      for (const [l, want] of layers.entries()) {
        const got = ours.logits[i]![l]!;
        assert.equal(got.length, want.length, `text ${i} layer ${l}: [T * E]`);
        for (let k = 0; k < want.length; k++) {
          worst = Math.max(worst, Math.abs(got[k]! - want[k]!));
          scale = Math.max(scale, Math.abs(want[k]!));
          n++;
        }
      }
    }
    assert.ok(n > 0 && scale > 0.05, `logits recorded (${n}, scale ${scale})`);
    assert.ok(worst <= 1e-4 * Math.max(1, scale), `max |ours − transformers| = ${worst} (logits up to ${scale})`);
  });
}

test('DeepSeek MoE (ungated shared expert, residual_scale, top-2 of 3): router logits match a plain float64 forward of the written model', async () => {
  // transformers runs DeepSeek MoE only as remote code: test/helpers/arch-moe-forward.ts is the reference here.
  const c: RouterCase = {
    name: 'deepseek',
    async recipe(d) {
      const over = { layers: 3 };
      const base = await tinyFamilyModel(join(d, 'd-base'), 'llama', 41, over);
      const a = await tinyFamilyModel(join(d, 'd-a'), 'llama', 42, over);
      const b = await tinyFamilyModel(join(d, 'd-b'), 'llama', 43, over);
      const file = join(d, 'deepseek.yml');
      writeFileSync(file, recipeYaml({ base, gate: 'hidden', topK: 2, architecture: 'deepseek', experts: [{ model: a, prompts: ['sums of numbers'] }, { model: b, prompts: ['poems about the sea'], residual: 0.5 }, { model: base, prompts: ['castles and kings'] }], shared: [{ model: base }] }));
      return file;
    },
    texts: ['sums of numbers', 'The sun rose over the quiet harbour and the boats went out one by one.'],
  };
  const built = await buildCase(c, dir, join(dir, 'cache'));
  const out = join(dir, 'deepseek-model');
  await writeCase(built, out);
  const ours = await mergedRouterLogits(built.merge, built.planDir, c.texts);
  for (const [i, ids] of ours.ids.entries()) {
    const ref: Float64Array[] = [];
    await deepseekMoeHiddenStates(out, ids, ref);
    assert.equal(ref.length, 3);
    for (const [l, want] of ref.entries()) {
      const got = ours.logits[i]![l]!;
      assert.equal(got.length, want.length);
      let worst = 0, scale = 0;
      for (let k = 0; k < want.length; k++) {
        worst = Math.max(worst, Math.abs(got[k]! - want[k]!));
        scale = Math.max(scale, Math.abs(want[k]!));
      }
      assert.ok(scale > 0.05 && worst <= 1e-4 * Math.max(1, scale), `text ${i} layer ${l}: max diff ${worst} (scale ${scale})`);
    }
  }
});
