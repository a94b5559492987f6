import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { ContentCache, processStartTime, withLock } from '../../libs/cache';
import { ROOT, tempDir } from '../helpers/tmp';

// A merge waiting on a prompt-cache lock must never wait on a process that is gone.
const bootId = () => {
  try {
    return require('node:fs').readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return null;
  }
};

// A waiter says "waiting for ..." before its first sleep: a lock reclaimed with no such line was reclaimed at the
// first look, however slow the machine. The tests' timeouts only stop a hang.
const waited = (logs: string[]) => logs.filter((l) => l.startsWith('waiting for'));

function lockDir(cache: string, name: string, owner?: object): string {
  const d = join(cache, 'locks', name);
  mkdirSync(d, { recursive: true });
  if (owner) writeFileSync(join(d, 'owner.json'), JSON.stringify(owner));
  return d;
}

test('a lock whose pid is alive but belongs to another process (pid reuse) is reclaimed at once', { skip: processStartTime(process.pid) === null && 'needs /proc', timeout: 20_000 }, async () => {
  const cache = tempDir();
  // Our own pid is certainly alive; the start time says the lock was taken by an earlier process with it.
  lockDir(cache, 'base-x', { pid: process.pid, host: hostname(), boot: bootId(), start: '1', since: Date.now() - 60_000 });
  const logs: string[] = [];
  assert.equal(await withLock(cache, 'base-x', async () => 'ran', { log: (l) => logs.push(l) }), 'ran');
  assert.equal(logs.length, 1, logs.join('\n'));
  assert.match(logs[0]!, /reclaimed the stale lock .*base-x: pid \d+ now belongs to another process/);
  assert.deepEqual(readdirSync(join(cache, 'locks')), [], 'released afterwards');
});

test('a lock that holds no pid (old format or a crash while taking it) and is seconds old is reclaimed at once', { timeout: 20_000 }, async () => {
  const cache = tempDir();
  const empty = lockDir(cache, 'empty');
  const old = new Date(Date.now() - 10_000);
  utimesSync(empty, old, old);
  const legacy = lockDir(cache, 'legacy');
  writeFileSync(join(legacy, 'pid'), '');
  utimesSync(legacy, old, old);
  for (const name of ['empty', 'legacy']) {
    const logs: string[] = [];
    assert.equal(await withLock(cache, name, async () => name, { log: (l) => logs.push(l) }), name);
    assert.deepEqual(waited(logs), [], name);
    // An empty folder is replaced by the rename that takes the lock; one with files is reclaimed first.
    if (name === 'legacy') assert.match(logs.join('\n'), /reclaimed the stale lock .*legacy: it names no owner/);
  }
});

test('a lock of another machine is reclaimed when its owner stops refreshing it', { timeout: 20_000 }, async () => {
  const cache = tempDir();
  const d = lockDir(cache, 'remote', { pid: 1, host: 'elsewhere', boot: null, start: null, since: Date.now() - 60_000 });
  const old = new Date(Date.now() - 5000);
  utimesSync(join(d, 'owner.json'), old, old);
  const logs: string[] = [];
  // Unrefreshed for 5 s, stale after 2 s: reclaimed at the first look.
  await withLock(cache, 'remote', async () => undefined, { staleMs: 2000, log: (l) => logs.push(l) });
  assert.deepEqual(waited(logs), []);
  assert.match(logs.join('\n'), /its owner on elsewhere has not refreshed it for \d+ s/);
});

test('a waiting merge says what it waits for, and takes the lock once its holder is killed (seen dead, not timed out)', { timeout: 60_000 }, async () => {
  const cache = tempDir();
  const script = `require(${JSON.stringify(join(ROOT, 'libs', 'cache'))}).withLock(${JSON.stringify(cache)}, 'base-y', () => { process.stdout.write('held\\n'); return new Promise(() => setInterval(() => {}, 1000)); });`;
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((r) => child.stdout!.once('data', () => r()));
  const logs: string[] = [];
  let ran = false;
  // A staleness limit far beyond the test's timeout: only seeing the holder dead can hand the lock over.
  const waiting = withLock(cache, 'base-y', async () => ((ran = true), 'mine'), { staleMs: 3_600_000, log: (l) => logs.push(l), warn: (l) => logs.push(l) });
  while (!waited(logs).length) await new Promise((r) => setTimeout(r, 20));
  assert.match(waited(logs)[0]!, new RegExp(`waiting for .*base-y, held by pid ${child.pid} on ${hostname()} since \\d{4}-`));
  assert.equal(ran, false, 'not while the holder lives');
  child.kill('SIGKILL');
  assert.equal(await waiting, 'mine');
  assert.equal(waited(logs).length, 1, 'said once');
  assert.match(logs.join('\n'), new RegExp(`process ${child.pid} is gone`));
});

test('a cache that cannot be used (a file where the folder should be) means a warning and no cache, not a failure', async () => {
  const d = tempDir();
  const file = join(d, 'cache');
  writeFileSync(file, 'not a folder');
  const warnings: string[] = [];
  assert.equal(await withLock(file, 'base-z', async () => 'ran', { warn: (w) => warnings.push(w) }), 'ran');
  const cache = new ContentCache(file, (w) => warnings.push(w));
  await cache.putBound('k', 'm', Buffer.from('v'));
  assert.equal(await cache.getBound('k', 'm', 1), null);
  assert.match(warnings.join('\n'), /the cache .*cache cannot be used \((EEXIST|ENOTDIR): [^,]*\); going on without it/);
  assert.equal(warnings.length, 1, `warned once: ${warnings.join('\n')}`);
  assert.ok(existsSync(file));
});
