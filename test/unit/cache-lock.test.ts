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

async function timed<T>(f: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const t = Date.now();
  const value = await f();
  return { value, ms: Date.now() - t };
}

function lockDir(cache: string, name: string, owner?: object): string {
  const d = join(cache, 'locks', name);
  mkdirSync(d, { recursive: true });
  if (owner) writeFileSync(join(d, 'owner.json'), JSON.stringify(owner));
  return d;
}

test('a lock whose pid is alive but belongs to another process (pid reuse) is reclaimed at once', { skip: processStartTime(process.pid) === null && 'needs /proc' }, async () => {
  const cache = tempDir();
  // Our own pid is certainly alive; the start time says the lock was taken by an earlier process with it.
  lockDir(cache, 'base-x', { pid: process.pid, host: hostname(), boot: bootId(), start: '1', since: Date.now() - 60_000 });
  const logs: string[] = [];
  const { value, ms } = await timed(() => withLock(cache, 'base-x', async () => 'ran', { log: (l) => logs.push(l) }));
  assert.equal(value, 'ran');
  assert.ok(ms < 2000, `took ${ms} ms`);
  assert.match(logs.join('\n'), /reclaimed the stale lock .*base-x: pid \d+ now belongs to another process/);
  assert.deepEqual(readdirSync(join(cache, 'locks')), [], 'released afterwards');
});

test('a lock that holds no pid (old format or a crash while taking it) is reclaimed within seconds', async () => {
  const cache = tempDir();
  const empty = lockDir(cache, 'empty');
  const old = new Date(Date.now() - 10_000);
  utimesSync(empty, old, old);
  const legacy = lockDir(cache, 'legacy');
  writeFileSync(join(legacy, 'pid'), '');
  utimesSync(legacy, old, old);
  for (const name of ['empty', 'legacy']) {
    const { value, ms } = await timed(() => withLock(cache, name, async () => name));
    assert.equal(value, name);
    assert.ok(ms < 3000, `${name}: took ${ms} ms`);
  }
});

test('a lock of another machine is reclaimed when its owner stops refreshing it', async () => {
  const cache = tempDir();
  const d = lockDir(cache, 'remote', { pid: 1, host: 'elsewhere', boot: null, start: null, since: Date.now() - 60_000 });
  const old = new Date(Date.now() - 5000);
  utimesSync(join(d, 'owner.json'), old, old);
  const logs: string[] = [];
  const { ms } = await timed(() => withLock(cache, 'remote', async () => undefined, { staleMs: 2000, log: (l) => logs.push(l) }));
  assert.ok(ms < 2000, `took ${ms} ms`);
  assert.match(logs.join('\n'), /its owner on elsewhere has not refreshed it for \d+ s/);
});

test('a waiting merge says what it waits for, and takes the lock within seconds of its holder being killed', async () => {
  const cache = tempDir();
  const script = `require(${JSON.stringify(join(ROOT, 'libs', 'cache'))}).withLock(${JSON.stringify(cache)}, 'base-y', () => { process.stdout.write('held\\n'); return new Promise(() => setInterval(() => {}, 1000)); });`;
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((r) => child.stdout!.once('data', () => r()));
  const logs: string[] = [];
  const waiting = timed(() => withLock(cache, 'base-y', async () => 'mine', { log: (l) => logs.push(l), warn: (l) => logs.push(l) }));
  await new Promise((r) => setTimeout(r, 500));
  assert.match(logs.join('\n'), new RegExp(`waiting for .*base-y, held by pid ${child.pid} on ${hostname()} since \\d{4}-`));
  child.kill('SIGKILL');
  const t = Date.now();
  const { value } = await waiting;
  assert.equal(value, 'mine');
  assert.ok(Date.now() - t < 3000, `reclaimed ${Date.now() - t} ms after the kill`);
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
