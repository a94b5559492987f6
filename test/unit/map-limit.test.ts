import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mapLimit } from '../../libs/util';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('mapLimit keeps the items\' order, never runs more than the limit at once, and runs each item once', async () => {
  let running = 0;
  let most = 0;
  const calls: number[] = [];
  const got = await mapLimit([5, 1, 4, 2, 3, 0, 6], 3, async (x, i) => {
    calls.push(i);
    running++;
    most = Math.max(most, running);
    await tick(x); // later items finish first
    running--;
    return x * 10;
  });
  assert.deepEqual(got, [50, 10, 40, 20, 30, 0, 60]);
  assert.equal(most, 3);
  assert.deepEqual([...calls].sort(), [0, 1, 2, 3, 4, 5, 6]);
  assert.deepEqual(await mapLimit([], 4, async () => 1), []);
});

test('mapLimit rejects with the first error once every call started has settled, and starts none after it', async () => {
  const started: number[] = [];
  let settled = 0;
  await assert.rejects(
    mapLimit([0, 1, 2, 3, 4, 5], 2, async (_, i) => {
      started.push(i);
      await tick(i === 1 ? 1 : 5);
      settled++;
      if (i === 1) throw new Error('item 1 failed');
      return i;
    }),
    /item 1 failed/,
  );
  assert.equal(settled, started.length, 'nothing still running when it rejects');
  assert.ok(!started.includes(5), `no item started after the failure (started: ${started.join(', ')})`);
  await assert.rejects(mapLimit([1], 0, async (x) => x), /limit 0 must be at least 1/);
});
