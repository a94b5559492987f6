// Its own file: the test runner gives it a process of its own, where nothing has compiled the float kernels yet.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { readModelConfig, openWeights } from '../../libs/model-folder';
import { floatKernelsSettled } from '../../libs/safetensors';
import { cachedHiddenStates } from '../../libs/stages/embed-prompts';
import { FIXTURES } from '../helpers/forward-fixtures';

test('while the forward pass of missed prompts runs in its worker, the float kernels that the next stages check and write states with are compiled (not after it, on an edit\'s path)', async () => {
  const cacheDir = mkdtempSync(join(tmpdir(), 'moe-forge-kernels-'));
  try {
    const dir = join(FIXTURES, 'tiny-llama', 'tiny-a');
    const base = { key: dir, ref: dir, dir, config: await readModelConfig(dir), weights: await openWeights(dir) };
    assert.equal(floatKernelsSettled(), false, 'nothing compiled them before the pass');
    let whenComputed: boolean | null = null;
    // The stats line comes right after the pass, before any state is checked or stored.
    const r = await cachedHiddenStates(base, ['a prompt never seen by this cache'], { cacheDir, stats: (line) => void (/^forward pass/.test(line) && (whenComputed = floatKernelsSettled())) });
    assert.equal(r.computed, 1);
    assert.equal(whenComputed, true, 'compiled by the time the pass returned');
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});
