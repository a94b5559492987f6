import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readModelConfig, openWeights } from '../../libs/model-folder';
import { getPromptState, promptStateListed, putPromptState, type CachedPromptState } from '../../libs/prompt-cache';
import { computePromptStatesIsolated } from '../../libs/forward';
import { cachedPerPrompt } from '../../libs/stages/per-prompt-cache';
import { FIXTURES } from '../helpers/forward-fixtures';
import { tempDir } from '../helpers/tmp';

const dir = join(FIXTURES, 'tiny-llama', 'tiny-a');
const TEXTS = ['The first prompt about rivers', 'A second one about mountains', 'And a third about the sea'];

/** cachedHiddenStates' kind with every step logged: which prompts each pass computed, when entries were read. */
async function states(cacheDir: string, texts: string[], events: string[]) {
  const base = { key: dir, ref: dir, dir, config: await readModelConfig(dir), weights: await openWeights(dir) };
  const L = base.config.numLayers, H = base.config.hiddenSize;
  return cachedPerPrompt<CachedPromptState, object>(base, texts, { cacheDir }, {
    label: 'prompt-state',
    material: {},
    listed: (c, m) => promptStateListed(c, m),
    get: (c, m) => (events.push(`get ${m.text}`), getPromptState(c, m)),
    put: (c, m, v) => putPromptState(c, m, v),
    async compute(ids, device, onProgress) {
      events.push(`compute ${ids.length}`);
      const computed = await computePromptStatesIsolated(dir, ids, { device, onProgress });
      events.push('computed');
      return computed.map((per, j) => ({ ids: ids[j]!, count: per[0]!.count, layers: L, hidden: H, last: per.map((x) => x.last), sum: per.map((x) => x.sum) }));
    },
  });
}

const bits = (s: CachedPromptState) => s.last.concat(s.sum).map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex')).join();

test('prompts the cache does not list go to the forward pass before the listed entries are read; a listed entry that reads back damaged is computed after all, the same bits', async () => {
  const cacheDir = tempDir();
  const cold: string[] = [];
  const all = await states(cacheDir, TEXTS, cold);
  assert.deepEqual(cold, ['compute 3', 'computed'], 'an empty cache: nothing listed, nothing read');
  // One prompt more: its pass starts before the three listed entries are read (they are read while it runs).
  const edit: string[] = [];
  const more = await states(cacheDir, [...TEXTS, 'A new prompt about forests'], edit);
  assert.equal(edit[0], 'compute 1', `the pass first, then the reads: ${edit.join(', ')}`);
  assert.deepEqual(edit.filter((e) => e.startsWith('get')).sort(), TEXTS.map((t) => `get ${t}`).sort());
  assert.deepEqual([more.computed, more.fromCache], [1, 3]);
  for (let i = 0; i < 3; i++) assert.equal(bits(more.values[i]!), bits(all.values[i]!), TEXTS[i]);
  // Damage every stored content file: the index still lists them, reading them fails their check, so all four are
  // computed in a second pass after the reads, and give the cold pass's bits.
  const walk = (p: string): string[] => (statSync(p).isDirectory() ? readdirSync(p).flatMap((f) => walk(join(p, f))) : [p]);
  for (const f of walk(join(cacheDir, 'content-v2'))) {
    const b = readFileSync(f);
    b[b.length - 1] ^= 0xff;
    writeFileSync(f, b);
  }
  const damaged: string[] = [];
  const again = await states(cacheDir, [...TEXTS, 'A new prompt about forests'], damaged);
  assert.deepEqual(damaged.filter((e) => !e.startsWith('get')), ['compute 4', 'computed'], damaged.join(', '));
  assert.ok(damaged.indexOf('compute 4') > damaged.lastIndexOf(`get ${TEXTS[2]}`), 'computed once the reads found them damaged');
  assert.deepEqual([again.computed, again.fromCache], [4, 0]);
  for (let i = 0; i < 3; i++) assert.equal(bits(again.values[i]!), bits(all.values[i]!), TEXTS[i]);
  assert.equal(bits(again.values[3]!), bits(more.values[3]!));
});
