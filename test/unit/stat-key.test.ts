import { mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

// The CommonJS module itself (its exports object), so that its waits can be counted.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const sk = require('../../libs/util/stat-key.js') as typeof import('../../libs/util/stat-key');

test('fineCtime: where it vouches for a file system, every change after a stat gets a ctime of its own (same size, same tick)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-ctime-'));
  try {
    const f = join(dir, 'probe');
    writeFileSync(f, 'aaaa');
    chmodSync(f, 0o640);
    const dev = sk.fineCtime(f);
    assert.equal(statSync(f).mode & 0o7777, 0o640, 'the probe leaves the mode as it was');
    if (dev === undefined) {
      // A coarse clock: nothing to vouch for; the record waits (below). Say so rather than pass silently.
      process.stdout.write('# this file system stamps changes from a coarse clock: fineCtime vouches for none\n');
      return;
    }
    assert.equal(dev, statSync(f, { bigint: true }).dev);
    for (let i = 0; i < 200; i++) {
      const before = sk.fileKey(f);
      writeFileSync(f, String(1000 + (i % 9000)).slice(0, 4)); // same size, within the same clock tick mostly
      assert.notEqual(sk.fileKey(f), before, `change ${i} kept the stats a stat had just seen`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('fineCtime: a missing file, or a folder, vouches for nothing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-ctime-'));
  try {
    assert.equal(sk.fineCtime(join(dir, 'absent')), undefined);
    assert.equal(sk.fineCtime(dir), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('recordKeys: files just written are recorded as they are; the racy window is waited out only where the probe finds a coarse clock', () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-record-'));
  const waits = mock.method(sk, 'sleepUntil', () => undefined);
  try {
    for (const n of ['a', 'b', 'stamp']) writeFileSync(join(dir, n), n);
    const fine = sk.fineCtimeIn(dirname(dir)) !== undefined;
    waits.mock.resetCalls();
    const keys = sk.recordKeys(dir, ['a', 'b', 'missing', 'stamp'], true);
    assert.deepEqual(Object.keys(keys), ['a', 'b', 'stamp']);
    for (const n of ['a', 'b', 'stamp']) assert.equal(keys[n], sk.fileKey(join(dir, n)), n);
    // Fine-grained stamps: none of the three racy files waits; coarse ones: each waits (the stubbed wait returns at once).
    assert.equal(waits.mock.callCount(), fine ? 0 : 3);
    // Without a probe the window is always waited out.
    waits.mock.resetCalls();
    sk.recordKeys(dir, ['a', 'b'], undefined);
    assert.equal(waits.mock.callCount(), 2);
  } finally {
    waits.mock.restore();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('recordKeys: a folder just written, recorded twice within the racy window, keeps every file\'s key (the probe touches none of them) and gets no scratch file', () => {
  const parent = mkdtempSync(join(tmpdir(), 'moe-forge-record-'));
  const dir = join(parent, 'out');
  const waits = mock.method(sk, 'sleepUntil', () => undefined);
  try {
    mkdirSync(dir);
    for (const n of ['a', 'stamp']) writeFileSync(join(dir, n), n);
    const before = { a: sk.fileKey(join(dir, 'a')), stamp: sk.fileKey(join(dir, 'stamp')) };
    const first = sk.recordKeys(dir, ['a', 'stamp'], true);
    const second = sk.recordKeys(dir, ['a', 'stamp'], true);
    // A probe on the stamp itself moved its ctime each time: the next record (or the no-op memo) found it racy again.
    assert.deepEqual(first, before);
    assert.deepEqual(second, before);
    assert.deepEqual(readdirSync(parent), ['out'], 'the scratch file is gone');
    assert.deepEqual(readdirSync(dir).sort(), ['a', 'stamp']);
  } finally {
    waits.mock.restore();
    rmSync(parent, { recursive: true, force: true });
  }
});
