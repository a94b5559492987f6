import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { availableBackends, computePromptStates, type ForwardProgress } from '../../libs/forward';
import { ForgeError } from '../../libs/errors';
import { FIXTURES } from '../helpers/forward-fixtures';
import { maxAbsDiff } from '../helpers/forward-reference';

const TINY_A = join(FIXTURES, 'tiny-llama', 'tiny-a');

test('progress reports each prompt of each layer that runs (L-1 of them: the last output is not a layer input)', async () => {
  const seen: ForwardProgress[] = [];
  const states = await computePromptStates(TINY_A, [[0, 5, 6], [0, 9]], { weights: 'memory', onProgress: (p) => seen.push(p) });
  assert.deepEqual(seen, [
    { layer: 0, layers: 1, promptsDone: 1, prompts: 2, weights: 'memory' },
    { layer: 0, layers: 1, promptsDone: 2, prompts: 2, weights: 'memory' },
  ]);
  assert.equal(states.length, 2);
  assert.equal(states[0]!.length, 2);
  assert.equal(states[1]![0]!.count, 2);
  assert.equal(states[1]![0]!.last.length, 64);
});

test('no prompts: one empty result per prompt, no session', async () => {
  assert.deepEqual(await computePromptStates(TINY_A, [], { weights: 'memory' }), []);
});

test('webgpu, where bundled: either it runs and agrees with the CPU, or it fails as a ForgeError naming the device', async (t) => {
  if (!availableBackends().includes('webgpu')) return t.skip('webgpu not bundled on this platform');
  const ids = [[0, 42, 506, 359, 81]];
  const cpu = await computePromptStates(TINY_A, ids, { weights: 'memory' });
  try {
    const gpu = await computePromptStates(TINY_A, ids, { weights: 'memory', device: 'webgpu' });
    assert.ok(maxAbsDiff(gpu[0]![1]!.last, cpu[0]![1]!.last) < 1e-3);
  } catch (e) {
    assert.ok(e instanceof ForgeError, String(e));
    assert.equal(e.code, 'device_failed');
    assert.match(e.message, /device "webgpu" could not start an onnxruntime session/);
  }
});
