/** gate_mode fit through Nx: the build runs, the report routes the fitted routers, and an added prompt costs one forward pass. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';
import type { RoutingReport } from '../../libs/report';

const ws = throwawayWorkspace();
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
const recipe = (extra: string) => `base_model: ../../models/tiny-a
gate_mode: fit
fit_lambda: 0.05
experts:
  - source_model: ../../models/tiny-b
    positive_prompts: ["abcabc cab", "bad cab bead"${extra}]
  - source_model: ../../models/tiny-c
    positive_prompts: ["xyz zyx yzx", "wxy yxw"]
`;
addRecipe(ws, 'm', recipe(''));
const stage = (s: string) => join(ws, 'dist', 'stages', 'm', s);
const stats = () => JSON.parse(readFileSync(join(stage('embed-prompts'), 'stats.json'), 'utf8')) as { computed: number; fromCache: number };

test('a fit recipe builds through Nx; its report routes the fitted routers; one prompt added computes one prompt', async () => {
  const cold = await nx(ws, ['run', 'm:build']);
  assert.equal(cold.exitCode, 0, cold.stdout + cold.stderr);
  assert.deepEqual(stats(), { computed: 4, fromCache: 0 });
  // The stage's summary says what fit's prompt states are (it once called them token embeddings).
  assert.match(cold.stdout, /prompt states of 4 prompts \(every token's router input, \d+ layers, cpu\)/);
  const gates = JSON.parse(readFileSync(join(stage('build-gates'), 'gates.json'), 'utf8'));
  assert.equal(gates.gateMode, 'fit');
  const report = JSON.parse(readFileSync(join(stage('report'), 'routing.json'), 'utf8')) as RoutingReport;
  assert.equal(report.gateMode, 'fit');
  assert.match(report.state, /router input/);

  addRecipe(ws, 'm', recipe(', "dace face"'));
  const plus = await nx(ws, ['run', 'm:build']);
  assert.equal(plus.exitCode, 0, plus.stdout + plus.stderr);
  assert.deepEqual(stats(), { computed: 1, fromCache: 4 });
});
