import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { computeAllHiddenStates, computePadStates, computePromptStates } from '../../libs/forward';
import { loadTokenizer } from '../../libs/tokenizer';
import { FIXTURES, openReference } from '../helpers/forward-fixtures';
import { maxAbsDiff } from '../helpers/forward-reference';

interface PromptSet { prompts: string[]; ids_unpadded: number[][]; input_ids: number[][]; attention_mask: number[][] }
interface RefExpert { positive_prompts: PromptSet; negative_prompts?: PromptSet }

const BASE = join(FIXTURES, 'tiny-llama', 'tiny-a'); // the recipe's base_model: hidden states come from it
const H = 64, L = 2;

async function load() {
  const json = JSON.parse(await readFile(join(FIXTURES, 'parity', 'mixtral-hidden.reference.json'), 'utf8')) as { experts: RefExpert[] };
  const ref = await openReference(join(FIXTURES, 'parity', 'mixtral-hidden.reference.safetensors'));
  const sets: { key: string; set: PromptSet }[] = [];
  json.experts.forEach((e, i) => {
    sets.push({ key: `e${i}.positive_prompts`, set: e.positive_prompts });
    if (e.negative_prompts) sets.push({ key: `e${i}.negative_prompts`, set: e.negative_prompts });
  });
  return { sets, ref };
}

test('mixtral-hidden parity: ids, and every real token of the left-padded batches within 1e-4', async () => {
  const { sets, ref } = await load();
  const tok = await loadTokenizer(BASE);
  let compared = 0;
  for (const { key, set } of sets) {
    const ids = set.prompts.map((p) => tok.encodePrompt(p));
    assert.deepEqual(ids, set.ids_unpadded, key);
    const ours = await computeAllHiddenStates(BASE, ids);
    const want = await ref.f32(`${key}.hidden_states.float32`);
    const [E, B, T] = ref.shape(`${key}.hidden_states.float32`) as [number, number, number, number];
    assert.equal(E, L + 1);
    for (let b = 0; b < B; b++) {
      const n = ids[b]!.length, pad = T - n; // left padding: real tokens are the last n positions
      for (let e = 0; e < E; e++) {
        const row = want.subarray(((e * B + b) * T + pad) * H, ((e * B + b) * T + T) * H);
        const d = maxAbsDiff(ours[b]![e]!, row);
        assert.ok(d < 1e-4, `${key} prompt ${b} entry ${e}: ${d}`);
        compared++;
      }
    }
  }
  assert.ok(compared >= 18);
});

test('pad state equals the reference pad positions, and per-prompt sums reproduce the padded mean (hidden_avg)', async () => {
  const { sets, ref } = await load();
  const pad = await computePadStates(BASE, 0);
  assert.equal(pad.length, L);
  let padPositions = 0;
  for (const { key, set } of sets) {
    const want = await ref.f32(`${key}.hidden_states.float32`);
    const [, B, T] = ref.shape(`${key}.hidden_states.float32`) as [number, number, number, number];
    const states = await computePromptStates(BASE, set.ids_unpadded);
    for (let b = 0; b < B; b++) {
      const n = set.ids_unpadded[b]!.length;
      for (let l = 0; l < L; l++) {
        const at = (t: number) => want.subarray(((l * B + b) * T + t) * H, ((l * B + b) * T + t + 1) * H);
        for (let t = 0; t < T - n; t++, padPositions++) {
          const d = maxAbsDiff(pad[l]!, at(t));
          assert.ok(d < 1e-4, `${key} prompt ${b} layer ${l} pad position ${t}: ${d}`);
        }
        // The reference's hidden_avg row: the mean over all T positions, pads included.
        const mean = new Float64Array(H);
        for (let t = 0; t < T; t++) at(t).forEach((v, j) => (mean[j]! += v / T));
        const s = states[b]![l]!;
        assert.equal(s.count, n);
        const ours = Array.from(s.sum, (v, j) => (v + (T - n) * pad[l]![j]!) / T);
        assert.ok(maxAbsDiff(ours, mean) < 1e-4, `${key} prompt ${b} layer ${l} padded mean`);
      }
    }
  }
  assert.ok(padPositions > 0, 'the fixture has padded rows');
});

test('mean of the last-token states equals the reference gatevec_last', async () => {
  const { sets, ref } = await load();
  for (const { key, set } of sets) {
    const states = await computePromptStates(BASE, set.ids_unpadded);
    const want = await ref.f32(`${key}.gatevec_last.float32`);
    for (let l = 0; l < L; l++) {
      const mean = new Float64Array(H);
      for (const s of states) s[l]!.last.forEach((v, j) => (mean[j]! += v / states.length));
      assert.ok(maxAbsDiff(mean, want.subarray(l * H, (l + 1) * H)) < 1e-4, `${key} layer ${l}`);
    }
  }
});
