import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { computeAllHiddenStates, computePromptStates } from '../../libs/forward';
import { loadTokenizer } from '../../libs/tokenizer';
import { FIXTURES, openReference } from '../helpers/forward-fixtures';
import { maxAbsDiff } from '../helpers/forward-reference';

const FAMILIES = ['mistral', 'qwen2', 'qwen3', 'llama3-rope', 'llama-fp16'];

for (const family of FAMILIES) {
  test(`${family}: token ids and every layer's hidden states match transformers within 1e-4`, async () => {
    const dir = join(FIXTURES, 'families', family);
    const model = join(dir, 'model');
    const json = JSON.parse(await readFile(join(dir, 'reference.json'), 'utf8')) as { prompts: string[]; token_ids: number[][] };
    const ref = await openReference(join(dir, 'reference.safetensors'));
    const tok = await loadTokenizer(model);
    const ids = json.prompts.map((p) => tok.encodePrompt(p));
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(ids[i], json.token_ids[i]);
      assert.deepEqual(ids[i], await ref.i64(`p${i}.input_ids`));
    }
    // Read-only fixtures in a real install: embed the weights (the external path is tested elsewhere).
    const states = await computeAllHiddenStates(model, ids);
    const H = 64;
    for (let i = 0; i < 3; i++) {
      const want = await ref.f32(`p${i}.hidden_states`);
      const [E, T] = ref.shape(`p${i}.hidden_states`) as [number, number, number];
      assert.equal(states[i]!.length, E);
      for (let e = 0; e < E; e++) {
        const d = maxAbsDiff(states[i]![e]!, want.subarray(e * T * H, (e + 1) * T * H));
        assert.ok(d < 1e-4, `prompt ${i} entry ${e}: max abs diff ${d}`);
      }
    }
    const reduced = await computePromptStates(model, ids);
    for (let i = 0; i < 3; i++) {
      const want = await ref.f32(`p${i}.hidden_states`);
      const T = ids[i]!.length;
      for (let l = 0; l < 2; l++) {
        assert.ok(maxAbsDiff(reduced[i]![l]!.last, want.subarray((l * T + T - 1) * H, (l * T + T) * H)) < 1e-4);
      }
    }
  });
}
