import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { appendFileSync, existsSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { ContentCache } from '../../libs/cache';
import { tempDir } from '../helpers/tmp';

// Tests reach into cacache as someone else with write access to the cache folder could.
const cacache = require('cacache');

test('a bound entry is read back only with the key material it was stored with; anything else is a miss that drops it', async () => {
  const dir = tempDir();
  const cache = new ContentCache(dir);
  await cache.putBound('k', { prompt: 'a', layers: 2 }, Buffer.from('states of a'));
  assert.equal((await cache.getBound('k', { prompt: 'a', layers: 2 }, 100))?.toString(), 'states of a');
  assert.equal(await cache.getBound('k', { prompt: 'b', layers: 2 }, 100), null);
  assert.equal(await cacache.get.info(dir, 'k'), null, 'the entry that did not match is gone');
});

test('a bound entry larger than it can be is refused by its size, without reading it (index and file both claiming 3 GB)', async () => {
  const dir = tempDir();
  const cache = new ContentCache(dir);
  await cache.putBound('k', 'm', Buffer.alloc(64));
  const info = await cacache.get.info(dir, 'k');
  truncateSync(info.path, 3 * 2 ** 30);
  await cacache.index.insert(dir, 'k', info.integrity, { size: 3 * 2 ** 30 });
  const readBytes = () => Number(/rchar: (\d+)/.exec(readFileSync('/proc/self/io', 'utf8'))?.[1] ?? 0);
  const before = readBytes();
  assert.equal(await cache.getBound('k', 'm', 64), null);
  if (existsSync('/proc/self/io')) assert.ok(readBytes() - before < 1 << 20, `read ${readBytes() - before} bytes`);
  // A fresh put of the same key is found again.
  await cache.putBound('k', 'm', Buffer.alloc(64, 7));
  assert.deepEqual(await cache.getBound('k', 'm', 64), Buffer.alloc(64, 7));
});

test('entries are read as cacache reads them, without loading it: a key\'s last line wins, a deletion shadows, a line whose hash does not match is skipped, and content changed in place or cut short is a miss that drops the entry', async () => {
  const dir = tempDir();
  const cache = new ContentCache(dir);
  await cache.putBound('k', 'm', Buffer.from('first'));
  await cache.putBound('k', 'm', Buffer.from('second'));
  assert.equal((await cache.getBound('k', 'm', 100))?.toString(), 'second');
  assert.equal(await cache.mayHave('k'), true);
  await cacache.rm.entry(dir, 'k');
  assert.equal(await cache.mayHave('k'), false, 'a deletion line shadows the entries before it');
  assert.equal(await cache.getBound('k', 'm', 100), null);
  // A line someone else appended whose hash does not match its entry (here pointing at other content) is not an entry.
  await cache.putBound('other', 'm', Buffer.from('other content'));
  await cache.putBound('j', 'm', Buffer.from('kept'));
  const other = await cacache.get.info(dir, 'other');
  const hashed = createHash('sha256').update('j').digest('hex');
  const forged = JSON.stringify({ key: 'j', integrity: other.integrity, time: Date.now(), size: other.size, metadata: null });
  appendFileSync(join(dir, 'index-v5', hashed.slice(0, 2), hashed.slice(2, 4), hashed.slice(4)), `\n${'0'.repeat(40)}\t${forged}`);
  assert.equal((await cache.getBound('j', 'm', 100))?.toString(), 'kept');
  // The content changed in place (same size): its digest no longer matches; the entry and the content are dropped.
  const { path } = await cacache.get.info(dir, 'j');
  const bytes = readFileSync(path);
  bytes[bytes.length - 1] ^= 1;
  writeFileSync(path, bytes);
  assert.equal(await cache.getBound('j', 'm', 100), null);
  assert.equal(await cacache.get.info(dir, 'j'), null);
  assert.equal(existsSync(path), false, 'the damaged content is removed');
  // Cut short: a miss too.
  await cache.putBound('t', 'm', Buffer.from('truncated later'));
  truncateSync((await cacache.get.info(dir, 't')).path, 10);
  assert.equal(await cache.getBound('t', 'm', 100), null);
  // And reads, hits and misses, load no cacache (its load is what they skip).
  const script = `const { ContentCache } = require(${JSON.stringify(require.resolve('../../libs/cache'))});
    const c = new ContentCache(${JSON.stringify(dir)});
    Promise.all([c.getBound('other', 'm', 100), c.mayHave('other'), c.getBound('missing', 'm', 100), c.mayHave('t')])
      .then((r) => console.log(JSON.stringify({ r: r.map(String), loaded: Object.keys(require.cache).some((f) => f.includes('cacache')) })));`;
  const out = JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8' }));
  assert.deepEqual(out, { r: ['other content', 'true', 'null', 'false'], loaded: false });
});

test('a bound entry\'s data is read 4-byte aligned whatever the length of its key material (float data is then viewed, not copied); content grown past its entry\'s size is a miss', async () => {
  const dir = tempDir();
  const cache = new ContentCache(dir);
  const data = Buffer.from(Float32Array.from([1.5, -2, 3.25]).buffer);
  for (const material of ['m', 'mm', 'mmm', 'mmmm', { prompt: 'é', layers: 3 }]) {
    await cache.putBound(`k${JSON.stringify(material)}`, material, data);
    const got = await cache.getBound(`k${JSON.stringify(material)}`, material, 100);
    assert.deepEqual(got, data);
    assert.equal(got!.byteOffset % 4, 0, JSON.stringify(material));
  }
  const { path } = await cacache.get.info(dir, 'k"m"');
  appendFileSync(path, 'more');
  assert.equal(await cache.getBound('k"m"', 'm', 100), null);
});
