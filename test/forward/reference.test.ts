import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { computeAllHiddenStates, computePadStates, computePromptStates } from '../../libs/forward';
import { writeTinyModel, type TinyModelSpec } from '../../tools/testing/tiny-models';
import { referenceHiddenStates, maxAbsDiff } from '../helpers/forward-reference';

// Random models generated here cover what the five fixtures do not: more layers, other head layouts,
// every family's quirks at once, bf16/fp16 storage and the other RoPE scalings.
const base = { hidden: 48, layers: 3, heads: 6, kvHeads: 3, intermediate: 80, vocab: 64 };
const cases: [string, TinyModelSpec][] = [
  ['llama, 4 layers, 8 heads / 2 kv heads', { ...base, modelType: 'llama', hidden: 64, layers: 4, heads: 8, kvHeads: 2 }],
  ['llama MHA, bf16', { ...base, modelType: 'llama', heads: 4, kvHeads: 4, dtype: 'BF16' }],
  ['mistral, window 4, fp16', { ...base, modelType: 'mistral', slidingWindow: 4, dtype: 'F16', ropeTheta: 1e6 }],
  ['qwen2 biases, two shards', { ...base, modelType: 'qwen2', sharded: true }],
  ['qwen3 head_dim 24 != 32/4, bf16', { ...base, modelType: 'qwen3', hidden: 32, heads: 4, kvHeads: 2, headDim: 24, dtype: 'BF16' }],
  ['llama3 rope scaling', { ...base, modelType: 'llama', ropeScaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 } }],
  ['linear rope scaling', { ...base, modelType: 'llama', ropeScaling: { type: 'linear', factor: 4 } }],
  ['dynamic rope scaling, prompt past the original length', { ...base, modelType: 'llama', ropeScaling: { rope_type: 'dynamic', factor: 2, original_max_position_embeddings: 8 } }],
];
const prompts = [[0, 5, 9, 33, 2, 17, 63, 8, 8, 40, 1, 12, 30], [7], [0, 3, 3, 50, 21]];

for (const [name, spec] of cases) {
  test(`ONNX forward matches the float64 reference within 1e-5: ${name}`, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'forward-ref-'));
    try {
      await writeTinyModel(dir, { ...spec, seed: name.length * 7919 });
      const ours = await computeAllHiddenStates(dir, prompts);
      for (const [i, ids] of prompts.entries()) {
        const ref = await referenceHiddenStates(dir, ids);
        assert.equal(ours[i]!.length, spec.layers + 1);
        for (let e = 0; e <= spec.layers; e++) {
          const d = maxAbsDiff(ours[i]![e]!, ref[e]!);
          assert.ok(d < 1e-5, `prompt ${i} entry ${e}: max abs diff ${d}`);
        }
      }
      // The reduced states agree with the full ones (entries 0..L-1 only).
      const reduced = await computePromptStates(dir, prompts);
      const H = spec.hidden;
      for (const [i, ids] of prompts.entries()) {
        assert.equal(reduced[i]!.length, spec.layers);
        for (let l = 0; l < spec.layers; l++) {
          const all = ours[i]![l]!, T = ids.length;
          const { last, sum, count } = reduced[i]![l]!;
          assert.equal(count, T);
          assert.ok(maxAbsDiff(last, all.subarray((T - 1) * H)) < 1e-6);
          const s = new Float64Array(H);
          for (let t = 0; t < T; t++) for (let j = 0; j < H; j++) s[j]! += all[t * H + j]!;
          assert.ok(maxAbsDiff(sum, s) < 1e-5);
        }
      }
      // Pad state: the layers without their attention term.
      const pad = await computePadStates(dir, 3);
      const padRef = await referenceHiddenStates(dir, [3], { noAttention: true });
      assert.equal(pad.length, spec.layers);
      for (let l = 0; l < spec.layers; l++) assert.ok(maxAbsDiff(pad[l]!, padRef[l]!) < 1e-5, `pad state layer ${l}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}
