import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cpSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsWeights, readTensorBytes } from '../../libs/safetensors';
import { manifest } from '../helpers/manifest';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';

const ws = throwawayWorkspace();
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
addRecipe(ws, 'noise', readFileSync(join(FIXTURES, 'parity', 'mixtral-random-noise.yml'), 'utf8').replace(/\.\.\/tiny-llama\//g, '../../models/'));

test('the rng executor option reaches the stages that draw: nx run with --rng=torch builds the reference\'s bytes', async () => {
  const r = await nx(ws, ['run', 'noise:build', '--rng=torch', '--random-seed=42', '--layout=fused', '--outputPath=out/torch']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const m = manifest('mixtral-random-noise.fused.manifest.json');
  const w = await SafetensorsWeights.openFolder(join(ws, 'out', 'torch'));
  for (const [name, t] of Object.entries(m.tensors)) {
    assert.equal(createHash('sha256').update(await readTensorBytes(w.get(name))).digest('hex'), t.sha256, name);
  }
  const bad = await nx(ws, ['run', 'noise:build', '--rng=numpy']);
  assert.notEqual(bad.exitCode, 0);
  assert.match(bad.stdout + bad.stderr, /rng/);
});
