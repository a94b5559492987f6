import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { watchBuilds } from '../../libs/pipeline/watch';
import { tempDir } from '../helpers/tmp';
import { until } from '../helpers/processes';

/** A watch over `files` whose builds are recorded, each held until released when `hold` is set. */
function watched(files: string[], o: { hold?: boolean; fail?: (n: number) => boolean } = {}) {
  const events: string[] = [];
  const lines: string[] = [];
  const releases: (() => void)[] = [];
  const stop = new AbortController();
  let n = 0;
  const done = watchBuilds(
    files,
    async () => {
      const k = ++n;
      events.push(`build ${k}`);
      if (o.hold) await new Promise<void>((r) => releases.push(r));
      if (o.fail?.(k)) throw new Error(`build ${k} failed\nsecond line`);
    },
    { say: (l) => lines.push(l), prepare: () => events.push('prepare'), signal: stop.signal, settleMs: 10, pollMs: 50 },
  );
  return { events, lines, releases, stop, done };
}

test('--watch builds once, then again on each save (in place or by rename), preparing after each build', async () => {
  const d = tempDir();
  const recipe = join(d, 'moe.yml');
  writeFileSync(recipe, 'a: 1\n');
  const w = watched([recipe]);
  await until('first build and its preparation', () => w.events.length === 2);
  assert.deepEqual(w.events, ['build 1', 'prepare']);
  assert.match(w.lines.at(-1)!, /watching moe\.yml for changes/);
  writeFileSync(recipe, 'a: 2\n');
  await until('a build after a save in place', () => w.events.length === 4);
  // An editor's save: a new file renamed over the old one (another inode).
  writeFileSync(join(d, '.moe.yml.swp'), 'a: 3\n');
  renameSync(join(d, '.moe.yml.swp'), recipe);
  await until('a build after a save by rename', () => w.events.length === 6);
  // Other files of the folder (the output, an editor's swap file) start nothing.
  writeFileSync(join(d, 'other.txt'), 'x');
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(w.events, ['build 1', 'prepare', 'build 2', 'prepare', 'build 3', 'prepare']);
  assert.ok(w.lines.includes('changed: moe.yml; building'), w.lines.join('\n'));
  w.stop.abort();
  await w.done;
});

test('--watch: saves during a build make one more build after it, and preparation waits for the last', async () => {
  const d = tempDir();
  const recipe = join(d, 'moe.yml');
  const prompts = join(d, 'eval.jsonl');
  writeFileSync(recipe, 'a: 1\n');
  writeFileSync(prompts, '{}\n');
  const w = watched([recipe, prompts], { hold: true });
  await until('first build started', () => w.releases.length === 1);
  // Two saves of two files while the first build runs (its poll ticks several times meanwhile).
  writeFileSync(recipe, 'a: 2\n');
  writeFileSync(prompts, '{"a": 1}\n');
  await new Promise((r) => setTimeout(r, 150));
  assert.deepEqual(w.events, ['build 1'], 'nothing starts while a build runs');
  w.releases[0]!();
  await until('the second build started', () => w.releases.length === 2);
  assert.deepEqual(w.events, ['build 1', 'build 2'], 'no preparation between a build and the one the saves asked for');
  assert.ok(w.lines.includes('changed: moe.yml, eval.jsonl; building'), w.lines.join('\n'));
  w.releases[1]!();
  await until('prepared after the last build', () => w.events.length === 3);
  await new Promise((r) => setTimeout(r, 150));
  assert.deepEqual(w.events, ['build 1', 'build 2', 'prepare'], 'one build for both saves, then nothing until the next save');
  w.stop.abort();
  await w.done;
});

test('--watch: a failed build is said in one line and the watch goes on; stopping ends it', async () => {
  const d = tempDir();
  const recipe = join(d, 'moe.yml');
  writeFileSync(recipe, 'a: 1\n');
  const w = watched([recipe], { fail: (k) => k === 2 });
  await until('first build', () => w.events.length === 2);
  writeFileSync(recipe, 'a: broken\n');
  await until('the failed build, then preparation', () => w.events.length === 4);
  assert.ok(w.lines.includes('error: build 2 failed'), w.lines.join('\n'));
  writeFileSync(recipe, 'a: fixed\n');
  await until('a build after the failed one', () => w.events.length === 6);
  w.stop.abort();
  await w.done; // resolves: nothing keeps the watch (its folder watcher, its poll) alive
  writeFileSync(recipe, 'a: after\n');
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(w.events.length, 6, 'no build after the watch ended');
});
