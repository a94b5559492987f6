import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, truncateSync } from 'node:fs';
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
