/**
 * vocabMetadata against what llama.cpp's converter wrote (test/fixtures/gguf, recorded by
 * scripts/record-gguf-fixtures.py): for each architecture's tiny output built by our command, and for three real
 * tokenizers, every tokenizer.* key and value; the pre-tokenizer choice for tokenizers the converter does not know.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { vocabMetadata } from '../../libs/gguf/vocab';
import { choosePreTokenizer, CANDIDATES } from '../../libs/gguf/pre-tokenizer';
import { loadTransformersTokenizer } from '../../libs/tokenizer';
import { buildRecorded } from '../helpers/gguf-build';
import { ROOT, tempDir, TINY } from '../helpers/tmp';
import { GGUF_FIXTURES, metadataDifferences, readIndex, readManifest } from '../helpers/gguf-manifest';

const dir = tempDir('moe-forge-gguf-vocab-');
const index = readIndex();
const isTokenizerKey = (k: string) => k.startsWith('tokenizer.');

// Our outputs, built once per architecture (the real tokenizers are recorded in copies of them).
const built = new Map<string, Promise<string>>();
function output(arch: string): Promise<string> {
  if (!built.has(arch)) built.set(arch, buildRecorded(arch, dir, join(dir, `out-${arch}`)).then(() => join(dir, `out-${arch}`)));
  return built.get(arch)!;
}

for (const [arch, entry] of Object.entries(index.outputs)) {
  test(`${arch}: the tokenizer keys are the converter's, key by key`, async () => {
    const out = await output(arch);
    const ours = await vocabMetadata(out);
    // The tiny tokenizer is unknown to the converter: the fixture was recorded with the pre-tokenizer forced to
    // the one our check chooses (README); every other key is the converter's own.
    assert.equal(entry.refused_by_converter, true);
    assert.deepEqual(ours.find((kv) => kv.key === 'tokenizer.ggml.pre')?.value, { type: 'string', value: index.forced_pre });
    // Every outtype writes the same vocabulary.
    for (const t of Object.values(entry.types)) assert.deepEqual(metadataDifferences(ours.map((kv) => [kv.key, kv.value]), readManifest(t).metadata, isTokenizerKey), [], t);
  });
}

for (const [name, tok] of Object.entries(index.tokenizers)) {
  test(`real tokenizer ${name} (${tok.package ?? tok.model_file}) in a ${tok.architecture} output: the converter's vocabulary keys`, async () => {
    // As recorded: a copy of our output with its tokenizer files replaced and vocab_size set to the tokenizer's.
    const model = join(dir, `tok-${name}`);
    cpSync(await output(tok.architecture), model, { recursive: true });
    if (tok.package) {
      for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model']) rmSync(join(model, f), { force: true });
      cpSync(join(ROOT, 'node_modules', tok.package, 'models'), model, { recursive: true });
    } else cpSync(join(GGUF_FIXTURES, tok.model_file!), join(model, 'tokenizer.model'));
    const config = JSON.parse(readFileSync(join(model, 'config.json'), 'utf8'));
    writeFileSync(join(model, 'config.json'), JSON.stringify({ ...config, vocab_size: tok.vocab_size }));
    const ours = await vocabMetadata(model);
    assert.deepEqual(metadataDifferences(ours.map((kv) => [kv.key, kv.value]), readManifest(tok.manifest).metadata, isTokenizerKey), []);
  });
}

test('a tokenizer the converter does not know and no llama.cpp pre-tokenizer reproduces is refused in one line', async () => {
  const model = join(dir, 'prefix-space');
  mkdirSync(model);
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) cpSync(join(TINY('a'), f), join(model, f));
  // A byte-level BPE that prepends a space: llama.cpp's pre-tokenizers never do, so every candidate differs.
  const tj = JSON.parse(readFileSync(join(model, 'tokenizer.json'), 'utf8'));
  tj.pre_tokenizer.add_prefix_space = true;
  writeFileSync(join(model, 'tokenizer.json'), JSON.stringify(tj));
  writeFileSync(join(model, 'config.json'), JSON.stringify({ architectures: ['Qwen3MoeForCausalLM'], model_type: 'qwen3_moe', vocab_size: 512 }));
  await assert.rejects(vocabMetadata(model), (e: Error) => {
    assert.match(e.message, /tokenizer\.json: llama\.cpp's converter does not recognise this tokenizer \(check hash [0-9a-f]{12}…\) and none of llama\.cpp's pre-tokenizers gpt-2, llama-bpe, qwen2, starcoder tokenizes as transformers does \(gpt-2 differs on check text 1 at token 0;/);
    assert.ok(!e.message.includes('\n'));
    return true;
  });
});

test('the pre-tokenizer check chooses by tokenization, not by name: a Qwen2-style split is matched to qwen2', async () => {
  // The tiny tokenizer with Qwen2's regex and a ByteLevel step: unknown to the converter, so it is checked.
  const model = join(dir, 'qwen-split');
  mkdirSync(model);
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) cpSync(join(TINY('a'), f), join(model, f));
  const tj = JSON.parse(readFileSync(join(model, 'tokenizer.json'), 'utf8'));
  tj.pre_tokenizer = {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: CANDIDATES.find((c) => c.name === 'qwen2')!.original }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    ],
  };
  writeFileSync(join(model, 'tokenizer.json'), JSON.stringify(tj));
  const t = await loadTransformersTokenizer(model);
  const choice = choosePreTokenizer(t, model);
  assert.equal(choice.how, 'checked');
  assert.equal(choice.name, 'qwen2');
  // The same vocabulary with GPT-2's own split is matched to gpt-2, not to the earlier choice.
  tj.pre_tokenizer = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  writeFileSync(join(model, 'tokenizer.json'), JSON.stringify(tj));
  assert.equal(choosePreTokenizer(await loadTransformersTokenizer(model), model).name, 'gpt-2');
});

test('an architecture without a GGUF vocabulary reader is refused naming config.json', async () => {
  const model = join(dir, 'llama-dense');
  mkdirSync(model);
  writeFileSync(join(model, 'config.json'), JSON.stringify({ architectures: ['LlamaForCausalLM'] }));
  await assert.rejects(vocabMetadata(model), /config\.json, field architectures: architecture "LlamaForCausalLM" has no GGUF vocabulary reader/);
});

test('a damaged tokenizer.model is refused in one line naming the file', async () => {
  const model = join(dir, 'spm-damaged');
  mkdirSync(model);
  const good = readFileSync(join(GGUF_FIXTURES, 'spm', 'tokenizer.model'));
  writeFileSync(join(model, 'tokenizer.model'), good.subarray(0, 1000));
  writeFileSync(join(model, 'config.json'), JSON.stringify({ architectures: ['MixtralForCausalLM'], vocab_size: 512 }));
  await assert.rejects(vocabMetadata(model), /spm-damaged\/tokenizer\.model: not a SentencePiece model \(piece runs past the end of the file at byte \d+\)$/);
});

test('what the converter writes but vocab.ts does not yet is refused in one line, never written differently', async () => {
  const model = join(dir, 'unsupported');
  mkdirSync(model);
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) cpSync(join(TINY('a'), f), join(model, f));
  writeFileSync(join(model, 'config.json'), JSON.stringify({ architectures: ['MixtralForCausalLM'], vocab_size: 32016 }));
  await assert.rejects(vocabMetadata(model), /config\.json, field vocab_size: CodeLlama vocabularies \(vocab_size 32016\) are not supported for GGUF output yet$/);
  writeFileSync(join(model, 'config.json'), JSON.stringify({ architectures: ['Qwen3MoeForCausalLM'], vocab_size: 512 }));
  const cfg = JSON.parse(readFileSync(join(model, 'tokenizer_config.json'), 'utf8'));
  writeFileSync(join(model, 'tokenizer_config.json'), JSON.stringify({ ...cfg, chat_template: [{ name: 'default', template: 'x' }, { name: 'tool_use', template: 'y' }] }));
  await assert.rejects(vocabMetadata(model), /tokenizer_config\.json: a chat_template that is a list of named templates is not supported for GGUF output yet$/);
  // A plain template is written as the converter writes it.
  writeFileSync(join(model, 'tokenizer_config.json'), JSON.stringify({ ...cfg, chat_template: '{{ messages }}' }));
  assert.deepEqual((await vocabMetadata(model)).find((kv) => kv.key === 'tokenizer.chat_template')?.value, { type: 'string', value: '{{ messages }}' });
});
