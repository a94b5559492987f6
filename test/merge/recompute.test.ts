/** --recompute: one documented way to reuse nothing (the prompt-state cache, content ids, the output's shards). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergekitMoe } from '../helpers/cli';
import { tempDir, TINY } from '../helpers/tmp';

const dir = tempDir('moe-forge-recompute-');
writeFileSync(join(dir, 'moe.yml'), `base_model: ${TINY('a')}
gate_mode: hidden
experts:
  - source_model: ${TINY('b')}
    positive_prompts: ["Write a python function"]
  - source_model: ${TINY('c')}
    positive_prompts: ["Once upon a time"]
`);
const out = join(dir, 'out');
const cache = join(dir, 'cache');
const run = (...extra: string[]) => mergekitMoe(['moe.yml', out, '-v', ...extra], dir, { MOE_FORGE_CACHE: cache });
const inodes = () => new Map(readdirSync(out).filter((f) => f.endsWith('.safetensors')).map((f) => [f, statSync(join(out, f)).ino]));

test('--recompute computes every prompt state again and writes every file again; without it, both are reused', async () => {
  let r = await run();
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /prompt states: 2 computed, 0 from cache/);
  const first = inodes();
  r = await run();
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /prompt states: 0 computed, 2 from cache/);
  assert.match(r.stderr, /output unchanged/);
  assert.deepEqual(inodes(), first, 'nothing rewritten');
  r = await run('--recompute');
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /prompt states: 2 computed, 0 from cache/);
  assert.doesNotMatch(r.stderr, /output unchanged|kept model/);
  const again = inodes();
  assert.deepEqual([...again.keys()], [...first.keys()]);
  for (const [f, ino] of again) assert.notEqual(ino, first.get(f), `${f} written again`);
  // The cache was refreshed, not emptied: the next plain run reads it.
  r = await run();
  assert.match(r.stderr, /prompt states: 0 computed, 2 from cache/);
});
