import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { ContentCache } from '../../libs/cache';
import { getPadState, getPromptState, padStateKey, promptStateKey, putPadState, putPromptState } from '../../libs/prompt-cache';
import { tempDir } from '../helpers/tmp';

// What a build before the one-token twin stored: keys and material of 'forward-f32-v1' for every entry.
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const v1PromptKey = (base: string, tok: string, text: string) => `prompt-state:${sha(JSON.stringify(['forward-f32-v1', base, tok, text]))}`;
const v1PadKey = (base: string, pad: number) => `pad-state:${sha(JSON.stringify(['forward-f32-v1', base, pad]))}`;
const floats = (n: number, v: number) => Buffer.from(new Float32Array(n).fill(v).buffer);

test('prompt states of 2+ tokens keep their keys and entries across the one-token twin; one-token and pad states stored before it miss', async () => {
  const cache = new ContentCache(tempDir());
  const [layers, hidden] = [2, 4];
  const material = (text: string, ids: number[]) => ({ base: 'b', tokenizer: 't', text, ids, layers, hidden });
  const v1Material = (text: string, ids: number[]) => ({ mode: 'prompt-state', forward: 'forward-f32-v1', base: 'b', tokenizer: 't', text: sha(text), ids, layers, hidden });
  assert.equal(promptStateKey('b', 't', 'two tokens', 2), v1PromptKey('b', 't', 'two tokens'));
  assert.notEqual(promptStateKey('b', 't', 'one', 1), v1PromptKey('b', 't', 'one'));
  assert.notEqual(padStateKey('b', 0), v1PadKey('b', 0));

  // Entries as the previous version wrote them.
  await cache.putBound(v1PromptKey('b', 't', 'two tokens'), v1Material('two tokens', [5, 6]), floats(2 * layers * hidden, 0.5));
  await cache.putBound(v1PromptKey('b', 't', 'one'), v1Material('one', [5]), floats(2 * layers * hidden, 0.25));
  await cache.putBound(v1PadKey('b', 0), { mode: 'pad-state', forward: 'forward-f32-v1', base: 'b', padTokenId: 0, layers, hidden }, floats(layers * hidden, 1));
  const kept = await getPromptState(cache, material('two tokens', [5, 6]));
  assert.deepEqual([...kept!.last[1]!], [0.5, 0.5, 0.5, 0.5]);
  assert.equal(await getPromptState(cache, material('one', [5])), null);
  assert.equal(await getPadState(cache, { base: 'b', padTokenId: 0, layers, hidden }), null);

  // This version's entries answer this version.
  const state = { ids: [5], count: 1, layers, hidden, last: [new Float32Array(hidden).fill(2), new Float32Array(hidden).fill(3)], sum: [new Float32Array(hidden).fill(4), new Float32Array(hidden).fill(5)] };
  await putPromptState(cache, material('one', [5]), state);
  assert.deepEqual([...(await getPromptState(cache, material('one', [5])))!.sum[1]!], [5, 5, 5, 5]);
  await putPadState(cache, { base: 'b', padTokenId: 0, layers, hidden }, [new Float32Array(hidden).fill(7), new Float32Array(hidden).fill(8)]);
  assert.deepEqual([...(await getPadState(cache, { base: 'b', padTokenId: 0, layers, hidden }))![1]!], [8, 8, 8, 8]);
});
