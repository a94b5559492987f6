import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, readdirSync, readFileSync, renameSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { contentId, contentIdStats, forgetContentHashes, memoisedContentId, memoSha256 } from '../../libs/resolve/content-id';
import { ContentCache } from '../../libs/cache';
import { ForgeError } from '../../libs/errors';
import { nowNs, RACY_NS, sleepUntil } from '../../libs/util/stat-key';
import { copyModel, tempDir, TINY } from '../helpers/tmp';

const settle = () => sleepUntil(nowNs() + RACY_NS);
const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
// Files are dated PAST (whole seconds, which utimes sets exactly), and set back to it as `cp -p` and `touch -d` do.
const PAST = new Date('2024-01-01T00:00:00Z');
const redate = (file: string) => utimesSync(file, PAST, PAST);

test('a model file replaced by another of the same size with its mtime kept (cp -p), or damaged in place and re-dated (touch -d), gets a new content id', async () => {
  const dir = copyModel(TINY('a'), join(tempDir(), 'm'));
  const cache = new ContentCache(tempDir());
  for (const f of readdirSync(dir)) redate(join(dir, f));
  settle();
  const id = await contentId(dir, { cache });
  assert.equal(await contentId(dir, { cache }), id, 'memo hit');

  // cp -p: a file of the same size and mtime renamed over config.json.
  const file = join(dir, 'config.json');
  const st = statSync(file);
  const text = readFileSync(file, 'utf8');
  const other = join(dir, '..', 'config.other');
  writeFileSync(other, text.replace('"llama"', '"LLAMA"'));
  redate(other);
  renameSync(other, file);
  assert.equal(statSync(file).size, st.size);
  assert.equal(statSync(file).mtimeMs, st.mtimeMs);
  settle();
  const replaced = await contentId(dir, { cache });
  assert.notEqual(replaced, id, 'the replaced file is hashed again');

  // Damaged in place (same inode, same size) and its mtime set back.
  const shard = join(dir, 'model.safetensors');
  const before = statSync(shard);
  const bytes = readFileSync(shard);
  bytes[bytes.length - 1] ^= 0xff;
  writeFileSync(shard, bytes);
  redate(shard);
  assert.equal(statSync(shard).ino, before.ino);
  assert.equal(statSync(shard).mtimeMs, before.mtimeMs);
  const damaged = await contentId(dir, { cache });
  assert.notEqual(damaged, replaced, 'the damaged shard is hashed again');
  // The files restored (content as at first, mtime kept): the first id again.
  copyFileSync(join(TINY('a'), 'config.json'), file);
  redate(file);
  bytes[bytes.length - 1] ^= 0xff;
  writeFileSync(shard, bytes);
  redate(shard);
  assert.equal(await contentId(dir, { cache }), id);
});

test('a file edited while it is hashed is hashed again: the hash and the memo are of what the file holds after', async () => {
  const d = tempDir();
  const file = join(d, 'model.safetensors');
  const first = Buffer.alloc(10 << 20, 1);
  const second = Buffer.alloc(10 << 20, 2);
  writeFileSync(file, first);
  redate(file);
  settle();
  const cache = new ContentCache(tempDir());
  let edits = 0;
  // After the first 4 MiB chunk: the file is rewritten (same size), its mtime set back, and the racy window let pass.
  const got = await memoSha256(file, cache, () => {
    if (edits++ > 0) return;
    writeFileSync(file, second);
    redate(file);
    settle();
  });
  assert.equal(got.sha256, sha(second), 'not a hash of the first chunk of one content and the rest of another');
  const h = contentIdStats.filesHashed;
  assert.equal((await memoSha256(file, cache)).sha256, sha(second), 'the memo holds the new content\'s hash');
  assert.equal(contentIdStats.filesHashed, h, 'a memo hit');
});

test('a file that changes on every read is an error naming it, never memoised', async () => {
  const d = tempDir();
  const file = join(d, 'model.safetensors');
  writeFileSync(file, Buffer.alloc(8 << 20, 1));
  let n = 0;
  await assert.rejects(
    memoSha256(file, new ContentCache(tempDir()), () => writeFileSync(file, Buffer.alloc(8 << 20, ++n))),
    (e: unknown) => e instanceof ForgeError && e.message.startsWith(file) && /changed on every one of 3 reads/.test(e.message),
  );
});

test('racy: a file hashed within a second of its last change is hashed again on the next call; once settled, it is memoised', async () => {
  const d = tempDir();
  const file = join(d, 'config.json');
  const cache = new ContentCache(tempDir());
  writeFileSync(file, '{"a": 1}');
  // A same-tick edit keeps size, mtime and ctime: this record cannot tell it, so it is not trusted.
  const h0 = contentIdStats.filesHashed;
  await memoSha256(file, cache);
  await memoSha256(file, cache);
  assert.equal(contentIdStats.filesHashed - h0, 2, 'the racy record was not trusted');
  settle();
  await memoSha256(file, cache);
  await memoSha256(file, cache);
  assert.equal(contentIdStats.filesHashed - h0, 3, 'hashed once more, then a memo hit');
});

test('the memoised content id is known only where every file\'s hash is memoised for the file as it is, and reads no weights', async () => {
  const dir = copyModel(TINY('a'), join(tempDir(), 'm'));
  const cache = new ContentCache(tempDir());
  for (const f of readdirSync(dir)) redate(join(dir, f));
  settle();
  assert.equal(await memoisedContentId(dir, cache), null, 'nothing memoised yet');
  const id = await contentId(dir, { cache });
  forgetContentHashes(); // from the cache's memo, as a new process reads it
  const hashed = contentIdStats.bytesHashed;
  assert.equal(await memoisedContentId(dir, cache), id);
  assert.equal(contentIdStats.bytesHashed, hashed, 'no file hashed');
  // A file re-dated (its stat key changes): not known any more.
  utimesSync(join(dir, 'config.json'), new Date('2024-02-01T00:00:00Z'), new Date('2024-02-01T00:00:00Z'));
  assert.equal(await memoisedContentId(dir, cache), null);
  assert.equal(await memoisedContentId(join(dir, 'missing'), cache), null, 'a folder that is not there: no guess, no error');
  // mayHave: the index alone, false for an absent key and under recompute.
  await cache.putBound('k', ['m'], Buffer.from('x'));
  assert.equal(await cache.mayHave('k'), true);
  assert.equal(await cache.mayHave('other'), false);
  assert.equal(await new ContentCache(cache.dir, () => undefined, { recompute: true }).mayHave('k'), false);
});
