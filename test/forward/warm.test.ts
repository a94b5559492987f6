import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { warmRanges } from '../../libs/forward/run';
import { ROOT, tempDir } from '../helpers/tmp';

const MB = 1 << 20;

test('warmRanges reads every byte of its ranges a chunk at a time, stops when told, and ends quietly on a file it cannot read', async () => {
  const d = tempDir();
  const file = join(d, 'model.safetensors');
  writeFileSync(file, Buffer.alloc(10 * MB + 3, 7));
  assert.equal(await warmRanges([{ file, offset: 3, byteLength: 6 * MB }, { file, offset: 6 * MB + 3, byteLength: 4 * MB }], () => false, MB), 10 * MB);
  // Told to stop after two chunks: no third read.
  let reads = 0;
  assert.equal(await warmRanges([{ file, offset: 0, byteLength: 10 * MB }], () => reads++ >= 2, MB), 2 * MB);
  // A range past the end reads what is there; a missing file ends the warming without an error.
  assert.equal(await warmRanges([{ file, offset: 9 * MB, byteLength: 4 * MB }], () => false, MB), MB + 3);
  assert.equal(await warmRanges([{ file: join(d, 'gone.safetensors'), offset: 0, byteLength: MB }, { file, offset: 0, byteLength: MB }], () => false, MB), 0);
});

test('warmAhead reads the layers after the first of the pass set up ahead (every byte of their tensors), none once told to stop, and the pass that follows is unchanged', async () => {
  const { computePromptStates, prepareForward, warmAhead } = await import('../../libs/forward/run');
  const { openWeights, readModelConfig } = await import('../../libs/model-folder');
  const { planLayerTensors } = await import('../../libs/forward/layer-graph');
  const dir = join(ROOT, 'test', 'fixtures', 'tiny-llama', 'tiny-a');
  const cfg = await readModelConfig(dir);
  const weights = await openWeights(dir);
  // Every tensor of layers 1.. as the pass plans them (their roles checked against the config).
  let expected = 0;
  for (let l = 1; l < cfg.numLayers; l++) for (const t of planLayerTensors(cfg, weights, l).values()) expected += t.loc.byteLength;
  assert.ok(expected > 0);
  const plain = await computePromptStates(dir, [[0, 5, 9]]);
  await prepareForward(dir);
  assert.equal(await warmAhead(() => true), 0, 'nothing read once told to stop');
  assert.equal(await warmAhead(() => false), expected);
  const after = await computePromptStates(dir, [[0, 5, 9]]);
  assert.deepEqual(after, plain);
});
