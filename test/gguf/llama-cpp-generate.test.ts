/**
 * Our GGUF loads in llama.cpp (node-llama-cpp's prebuilt binaries, CPU) and generates the tokens transformers
 * generates from the same output folder (greedy, recorded in test/fixtures/gguf/index.json); llama.cpp's
 * tokenization of the prompt is transformers'.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { buildRecorded } from '../helpers/gguf-build';
import { readIndex } from '../helpers/gguf-manifest';
import { llamaCppGreedy } from '../helpers/llama-cpp';
import { tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-gguf-generate-');
const index = readIndex();

// Where llama.cpp's graph is not transformers' for these outputs, equal tokens are not expected.
const NOT_COMPARABLE: Record<string, string> = {
  deepseek: "transformers has no DeepSeek-MoE (v1) class of its own (the model's code is remote), so nothing was recorded",
  'qwen2-moe': "llama.cpp's qwen2moe graph ignores norm_topk_prob (true in our output), so its expert weights differ from transformers'",
};

for (const [arch, entry] of Object.entries(index.outputs)) {
  test(`${arch}: llama.cpp generates transformers' greedy tokens from our f32 GGUF`, { skip: NOT_COMPARABLE[arch] ?? false }, async () => {
    const g = entry.greedy!;
    const out = join(dir, arch);
    await buildRecorded(arch, dir, out, ['--gguf', 'f32']);
    const run = await llamaCppGreedy(join(out, 'model-f32.gguf'), g.prompt, g.input_ids, g.new_tokens.length);
    assert.deepEqual(run.promptTokens, g.input_ids, 'prompt tokens');
    assert.deepEqual(run.newTokens, g.new_tokens, 'generated tokens');
  });
}

test("mixtral: llama.cpp loads our split GGUF (routers and metadata in the first file) and generates transformers' greedy tokens", async () => {
  const g = index.outputs.mixtral!.greedy!;
  const out = join(dir, 'mixtral-split');
  await buildRecorded('mixtral', dir, out, ['--gguf', 'f32', '--gguf-split-max-size', '300k']);
  const files = readdirSync(out).filter((f) => f.endsWith('.gguf')).sort();
  assert.ok(files.length >= 3, files.join(', '));
  const run = await llamaCppGreedy(join(out, files[0]!), g.prompt, g.input_ids, g.new_tokens.length);
  assert.deepEqual(run.promptTokens, g.input_ids, 'prompt tokens');
  assert.deepEqual(run.newTokens, g.new_tokens, 'generated tokens');
});
