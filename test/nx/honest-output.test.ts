/** What a build prints is true of the run the user looks at: no warning per expert for random gates, a gone folder said once. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';

const ws = throwawayWorkspace('moe-forge-ws-honest-');
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
addRecipe(ws, 'r', `base_model: ../../models/tiny-a
gate_mode: random
experts:
  - source_model: ../../models/tiny-a
  - source_model: ../../models/tiny-b
  - source_model: ../../models/tiny-c
  - source_model: ../../models/tiny-b
    noise_scale: 0.01
experts_per_token: 1
`);

test('random gates: one line that experts starve by design, no warning per expert; a deleted output folder is said once', async () => {
  const r = await nx(ws, ['run', 'r:build']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const all = r.stdout + r.stderr;
  assert.doesNotMatch(all, /WARNING: .* starves in/);
  assert.match(all, /\d of 4 experts win no prompt in some layer, as expected of random gates \(the router needs training\)/);
  rmSync(join(ws, 'dist', 'models', 'r'), { recursive: true });
  const again = await nx(ws, ['run', 'r:build']);
  assert.equal(again.exitCode, 0, again.stdout + again.stderr);
  assert.match(again.stdout, /model folder dist\/models\/r is missing: writing it again/);
  assert.doesNotMatch(again.stdout, /changed since written/);
});

test('--skip-nx-cache reruns the stages but keeps what is unchanged; with --recompute nothing is reused', async () => {
  const out = join(ws, 'dist', 'models', 'r');
  const inodes = () => new Map(readdirSync(out).filter((f) => f.endsWith('.safetensors')).map((f) => [f, statSync(join(out, f)).ino]));
  assert.equal((await nx(ws, ['run', 'r:build'])).exitCode, 0);
  const before = inodes();
  const skip = await nx(ws, ['run', 'r:build', '--skip-nx-cache']);
  assert.equal(skip.exitCode, 0, skip.stdout + skip.stderr);
  assert.deepEqual(inodes(), before, 'the model folder is kept as it is');
  const all = await nx(ws, ['run', 'r:build', '--skip-nx-cache', '--recompute']);
  assert.equal(all.exitCode, 0, all.stdout + all.stderr);
  for (const [f, ino] of inodes()) assert.notEqual(ino, before.get(f), `${f} written again`);
});
