import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import {
  computePadStates,
  computePromptStates,
  computePromptStatesIsolated,
  computeRouterInputs,
  computeRouterInputsIsolated,
  prepareForward,
  prepareForwardWorker,
  startForwardWorker,
  stopForwardWorker,
  waitingForwardWorker,
} from '../../libs/forward';
import { FIXTURES } from '../helpers/forward-fixtures';
import { maxAbsDiff } from '../helpers/forward-reference';
import { alive, until } from '../helpers/processes';

const TINY = (n: string) => join(FIXTURES, 'tiny-llama', `tiny-${n}`);
const IDS = [[0, 17, 88, 301, 5, 9, 44], [0, 3, 3]];

const exited = (pid: number) => !alive(pid);

test('a pass prepared ahead (its first layer widened, or above the eager limit only checked) gives exactly the states of one that is not, and a preparation for other options is passed over', async () => {
  const plain = await computePromptStates(TINY('a'), IDS);
  await prepareForward(TINY('a'));
  const ahead = await computePromptStates(TINY('a'), IDS);
  for (const [p, per] of plain.entries()) {
    for (const [l, s] of per.entries()) {
      assert.equal(maxAbsDiff(s.last, ahead[p]![l]!.last), 0, `prompt ${p} layer ${l}`);
      assert.equal(maxAbsDiff(s.sum, ahead[p]![l]!.sum), 0, `prompt ${p} layer ${l} (sum)`);
    }
  }
  // A layer above the eager limit: the model checked and the session made, nothing read until the pass comes.
  await prepareForward(TINY('a'), {}, 0);
  const light = await computePromptStates(TINY('a'), IDS);
  for (const [p, per] of plain.entries()) for (const [l, s] of per.entries()) assert.equal(maxAbsDiff(s.last, light[p]![l]!.last), 0, `prompt ${p} layer ${l} (light)`);
  // Prepared for the prompt states' graph and another model's MLPs: router inputs with tiny-b's MLPs ignore it.
  const want = await computeRouterInputs(TINY('a'), IDS, { mlpFrom: TINY('b') });
  await prepareForward(TINY('a'));
  const got = await computeRouterInputs(TINY('a'), IDS, { mlpFrom: TINY('b') });
  for (const [p, per] of want.entries()) for (const [l, x] of per.entries()) assert.equal(maxAbsDiff(x, got[p]![l]!), 0, `router input ${p} ${l}`);
  // And prepared for router inputs, a pad-state pass (another graph) does not take it either.
  const pad = await computePadStates(TINY('a'), 0);
  await prepareForward(TINY('a'), { routerInput: true });
  const pad2 = await computePadStates(TINY('a'), 0);
  for (const [l, x] of pad.entries()) assert.equal(maxAbsDiff(x, pad2[l]!), 0, `pad ${l}`);
});

test('asked again for the pass it is setting up (the command\'s start, then the stage), the worker sets it up once; taken or for other options, anew', async () => {
  const plain = await computePromptStates(TINY('a'), IDS);
  const first = prepareForward(TINY('a'));
  const again = prepareForward(TINY('a'), { device: 'cpu', precision: 'fp32' }); // the defaults, spelt out
  assert.equal(await first, true);
  assert.equal(await again, false, 'joined the setup in progress');
  assert.equal(await prepareForward(TINY('a')), false, 'joined the finished setup');
  const got = await computePromptStates(TINY('a'), IDS);
  for (const [p, per] of plain.entries()) for (const [l, s] of per.entries()) assert.equal(maxAbsDiff(s.last, got[p]![l]!.last), 0, `prompt ${p} layer ${l}`);
  assert.equal(await prepareForward(TINY('a')), true, 'the pass took the last one');
  assert.equal(await prepareForward(TINY('a'), { routerInput: true }), true, 'other options');
  await computeRouterInputs(TINY('a'), IDS); // takes it: nothing left set up for the next test
});

test('preparing a pass over a broken model throws nothing there: the pass that needs it reports the error', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-ahead-'));
  try {
    writeFileSync(join(dir, 'config.json'), '{"model_type": "llama"');
    await prepareForward(dir);
    await assert.rejects(computePromptStates(dir, IDS), /config\.json/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a forward worker started ahead serves the next isolated pass (prepared or not) with the same states, then exits; one stopped unused exits', async () => {
  const want = await computePromptStates(TINY('a'), IDS);
  startForwardWorker();
  const pid = waitingForwardWorker();
  assert.ok(pid, 'a worker waits');
  prepareForwardWorker('prompts', TINY('a'), {});
  const got = await computePromptStatesIsolated(TINY('a'), IDS);
  assert.equal(waitingForwardWorker(), null, 'the pass took it');
  await until('the worker that served the pass exits', () => exited(pid));
  for (const [p, per] of want.entries()) for (const [l, s] of per.entries()) assert.equal(maxAbsDiff(s.last, got[p]![l]!.last), 0, `prompt ${p} layer ${l}`);

  // Prepared for prompt states, asked for router inputs: the same worker computes them unprepared.
  const wantRouter = await computeRouterInputs(TINY('a'), IDS);
  startForwardWorker();
  prepareForwardWorker('prompts', TINY('a'), {});
  const router = await computeRouterInputsIsolated(TINY('a'), IDS);
  for (const [p, per] of wantRouter.entries()) for (const [l, x] of per.entries()) assert.equal(maxAbsDiff(x, router[p]![l]!), 0, `router input ${p} ${l}`);

  startForwardWorker();
  const unused = waitingForwardWorker()!;
  startForwardWorker();
  assert.equal(waitingForwardWorker(), unused, 'one worker waits at a time');
  stopForwardWorker();
  assert.equal(waitingForwardWorker(), null);
  await until('the stopped worker exits', () => exited(unused));
});
