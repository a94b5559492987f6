import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { contentIdDetails, contentIdStats, sha256File } from '../../libs/resolve/content-id';
import { hashThreadStats, setHashThreadMin } from '../../libs/resolve/hash-thread';
import { ROOT, tempDir, TINY } from '../helpers/tmp';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('files at or above the threshold are hashed on the hashing thread, with the hashes and id the calling thread gives', async () => {
  const dir = tempDir();
  const bytes = randomBytes((9 << 20) + 123); // more than two of the reader's 4 MiB chunks, and a partial one
  const file = join(dir, 'w.bin');
  writeFileSync(file, bytes);
  const was = setHashThreadMin(Infinity);
  try {
    const here = await contentIdDetails(TINY('a'));
    const onThread = hashThreadStats.files;
    assert.equal(await sha256File(file), sha(bytes), 'below the threshold: this thread');
    assert.equal(hashThreadStats.files, onThread, 'nothing went to the thread');
    setHashThreadMin(1 << 20);
    const before = contentIdStats.bytesHashed;
    assert.equal(await sha256File(file), sha(bytes), 'on the thread');
    assert.equal(hashThreadStats.files, onThread + 1);
    assert.equal(contentIdStats.bytesHashed - before, bytes.length, 'its byte count comes back');
    setHashThreadMin(0);
    const threaded = await contentIdDetails(TINY('a'));
    assert.deepEqual(threaded, here, 'every file of the model on the thread: the same hashes and content id');
    assert.equal(hashThreadStats.files, onThread + 1 + here.files.length);
    assert.ok(hashThreadStats.started >= 1);
  } finally {
    setHashThreadMin(was);
  }
});

test('a file the hashing thread cannot read fails with the error reading it here gives', async () => {
  const dir = tempDir();
  const was = setHashThreadMin(0);
  try {
    await assert.rejects(sha256File(dir), (e: NodeJS.ErrnoException) => e.code === 'EISDIR' && /illegal operation on a directory/.test(e.message));
    // The thread goes on serving after a failure.
    writeFileSync(join(dir, 'x'), 'x');
    assert.equal(await sha256File(join(dir, 'x')), sha(Buffer.from('x')));
  } finally {
    setHashThreadMin(was);
  }
});

test('a process whose large files were hashed on the thread exits once done (the idle thread keeps nothing alive)', () => {
  const dir = tempDir();
  const file = join(dir, 'w.bin');
  const bytes = randomBytes(1 << 20);
  writeFileSync(file, bytes);
  const script = `const { setHashThreadMin, hashThreadStats } = require(${JSON.stringify(join(ROOT, 'libs', 'resolve', 'hash-thread'))});
const { sha256File } = require(${JSON.stringify(join(ROOT, 'libs', 'resolve', 'content-id'))});
setHashThreadMin(0);
sha256File(${JSON.stringify(file)}).then((h) => console.log(h, hashThreadStats.files));`;
  // A thread that kept the process alive would run into the timeout (execFileSync throws).
  const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { cwd: ROOT, encoding: 'utf8', timeout: 30_000 });
  assert.equal(out.trim(), `${sha(bytes)} 1`);
});
