/** What a build prints is true of the run the user looks at: no warning per expert for random gates, a gone folder said once. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, rmSync } from 'node:fs';
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
