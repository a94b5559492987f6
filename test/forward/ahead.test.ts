import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { copyFileSync, cpSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import {
  aheadStats,
  computePadStates,
  computePromptStates,
  computePromptStatesIsolated,
  computeRouterInputs,
  computeRouterInputsIsolated,
  prepareForward,
  prepareForwardWorker,
  speculatedForwardWorker,
  speculatePromptStates,
  speculationStats,
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

test('a pass set up ahead is taken only while its model\'s files are as they were: replaced or rewritten in place since (a watch\'s worker may wait for hours), or written too recently to vouch for, it is set up anew from the files as they are', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-ahead-'));
  // Past the racy window (util/stat-key): stats of files older than that vouch for them later.
  const settle = () => new Promise((r) => setTimeout(r, 1100));
  try {
    const [wantA, wantB] = [await computePromptStates(TINY('a'), IDS), await computePromptStates(TINY('b'), IDS)];
    const same = (want: typeof wantA, got: typeof wantA, what: string) => {
      for (const [p, per] of want.entries()) for (const [l, s] of per.entries()) assert.equal(maxAbsDiff(s.last, got[p]![l]!.last), 0, `${what}: prompt ${p} layer ${l}`);
    };
    const stats = () => ({ taken: aheadStats.taken, passedOver: aheadStats.passedOver });
    cpSync(TINY('a'), dir, { recursive: true });
    // Just written: not vouched for, set up anew.
    let s0 = stats();
    await prepareForward(dir);
    same(wantA, await computePromptStates(dir, IDS), 'just written');
    assert.deepEqual(stats(), { taken: s0.taken, passedOver: s0.passedOver + 1 });
    await settle();
    // Unchanged: taken.
    s0 = stats();
    await prepareForward(dir);
    same(wantA, await computePromptStates(dir, IDS), 'unchanged');
    assert.deepEqual(stats(), { taken: s0.taken + 1, passedOver: s0.passedOver });
    // Replaced by rename (a download tool's way): another file under the same name.
    s0 = stats();
    await prepareForward(dir);
    copyFileSync(join(TINY('b'), 'model.safetensors'), join(dir, 'model.safetensors.part'));
    renameSync(join(dir, 'model.safetensors.part'), join(dir, 'model.safetensors'));
    same(wantB, await computePromptStates(dir, IDS), 'replaced');
    assert.deepEqual(stats(), { taken: s0.taken, passedOver: s0.passedOver + 1 });
    // Rewritten in place, the same size: the first layer widened ahead came from the old bytes.
    cpSync(TINY('a'), dir, { recursive: true });
    await settle();
    s0 = stats();
    await prepareForward(dir);
    writeFileSync(join(dir, 'model.safetensors'), readFileSync(join(TINY('b'), 'model.safetensors')));
    same(wantB, await computePromptStates(dir, IDS), 'rewritten in place');
    assert.deepEqual(stats(), { taken: s0.taken, passedOver: s0.passedOver + 1 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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

test('prompts sent to the waiting worker ahead (speculated) serve a later pass over some of them with the states of its own pass; a pass they do not cover, or for other options, or a stop ends them', async () => {
  const CPU = { device: 'cpu' as const, precision: 'fp32' as const };
  const extra = [0, 9, 8, 7, 6, 5, 4, 3];
  const want = await computePromptStates(TINY('a'), [IDS[1]!, IDS[0]!]);
  const stats = () => ({ sent: speculationStats.sent, taken: speculationStats.taken, ended: speculationStats.ended });
  const s0 = stats();
  assert.equal(speculatePromptStates(TINY('a'), IDS, CPU), false, 'no worker waits: nothing is sent');

  startForwardWorker();
  assert.equal(speculatePromptStates(TINY('a'), [...IDS, extra], CPU), true);
  const pid = speculatedForwardWorker();
  assert.ok(pid, 'the pass runs');
  assert.equal(waitingForwardWorker(), null, 'in the worker that waited');
  const progress: number[] = [];
  // Another order, a subset (10 of the 18 tokens sent): taken, each prompt's row picked.
  const got = await computePromptStatesIsolated(TINY('a'), [IDS[1]!, IDS[0]!], { ...CPU, onProgress: (p) => progress.push(p.layer) });
  assert.deepEqual(stats(), { sent: s0.sent + 1, taken: s0.taken + 1, ended: s0.ended });
  assert.ok(progress.length > 0, 'its progress reaches the pass that took it');
  for (const [p, per] of want.entries()) {
    for (const [l, s] of per.entries()) {
      assert.equal(s.count, got[p]![l]!.count);
      assert.ok(maxAbsDiff(s.last, got[p]![l]!.last) <= 1e-5, `prompt ${p} layer ${l}`);
      assert.ok(maxAbsDiff(s.sum, got[p]![l]!.sum) <= 1e-4, `prompt ${p} layer ${l} (sum)`);
    }
  }
  await until('the worker exits', () => exited(pid));

  // A prompt it was not sent: ended, and the pass runs on its own.
  startForwardWorker();
  speculatePromptStates(TINY('a'), [IDS[0]!], CPU);
  let ended = speculatedForwardWorker()!;
  const fresh = await computePromptStatesIsolated(TINY('a'), IDS, CPU);
  assert.deepEqual(stats(), { sent: s0.sent + 2, taken: s0.taken + 1, ended: s0.ended + 1 });
  await until('the speculated pass is ended', () => exited(ended));
  assert.equal(fresh.length, 2);
  // Other options (the int8 path): ended.
  startForwardWorker();
  speculatePromptStates(TINY('a'), IDS, CPU);
  ended = speculatedForwardWorker()!;
  await computePromptStatesIsolated(TINY('a'), IDS, { device: 'cpu', precision: 'int8' });
  assert.equal(speculationStats.ended, s0.ended + 2);
  await until('ended for other options', () => exited(ended));
  // Far more than the pass needs (2 of 34 tokens), nothing computed yet: ended rather than waited for.
  startForwardWorker();
  speculatePromptStates(TINY('a'), [...IDS, extra, [...extra, ...extra]], CPU);
  ended = speculatedForwardWorker()!;
  await computePromptStatesIsolated(TINY('a'), [[0, 3]], CPU);
  assert.equal(speculationStats.ended, s0.ended + 3, 'not worth waiting for');
  await until('ended, not waited for', () => exited(ended));
  // Nobody takes it: a stop ends it.
  startForwardWorker();
  speculatePromptStates(TINY('a'), IDS, CPU);
  ended = speculatedForwardWorker()!;
  stopForwardWorker();
  assert.equal(speculatedForwardWorker(), null);
  assert.equal(speculationStats.ended, s0.ended + 4);
  await until('stopped', () => exited(ended));
});
