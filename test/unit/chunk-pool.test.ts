import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkPool, writeShard, readSafetensorsHeader } from '../../libs/safetensors';
import { tempDir } from '../helpers/tmp';

test('a chunk pool hands a given-back buffer out again, ignores buffers it did not lend, and keeps at most its limit', () => {
  const pool = new ChunkPool(1024, 2);
  const a = pool.take(100);
  assert.equal(a.length, 100);
  pool.give(a);
  assert.equal(pool.held, 1);
  const b = pool.take(1024);
  assert.equal(b.buffer, a.buffer, 'the same memory, reused');
  assert.equal(pool.held, 0);
  pool.give(b);
  pool.give(b); // twice: still one free buffer, or two takers would share it
  assert.equal(pool.held, 1);
  pool.give(Buffer.alloc(1024)); // not the pool's
  assert.equal(pool.held, 1);
  const big = pool.take(4096); // larger than a chunk: its own allocation, never taken back
  assert.equal(big.length, 4096);
  pool.give(big);
  assert.equal(pool.held, 1);
  const [c, d, e] = [pool.take(8), pool.take(8), pool.take(8)];
  for (const x of [c, d, e]) pool.give(x);
  assert.equal(pool.held, 2, 'no more than the limit kept');
  assert.notEqual(c.buffer, d.buffer);
});

test('writeShard gives each pooled chunk back only once it is written: a producer refilling them writes every byte right, and flushes as it goes', async () => {
  const d = tempDir();
  const chunk = 64 << 10;
  const pool = new ChunkPool(chunk, 4);
  const chunks = 40; // 2.5 MiB through at most a handful of buffers
  const specs = [{ name: 't', dtype: 'U8', shape: [chunks * chunk] }];
  const allocated = new Set<ArrayBufferLike>();
  async function* produce() {
    for (let i = 0; i < chunks; i++) {
      const b = pool.take(chunk);
      allocated.add(b.buffer);
      b.fill(i + 1);
      await new Promise((r) => setImmediate(r)); // let the writer run while this chunk is made
      yield b;
    }
  }
  const stats = { flushes: 0 };
  const f = join(d, 'model.safetensors');
  await writeShard(f, specs, produce, { pool, flushBytes: 256 << 10, stats });
  const h = await readSafetensorsHeader(f);
  const data = readFileSync(f).subarray(h.dataStart);
  assert.equal(data.length, chunks * chunk);
  for (let i = 0; i < chunks; i++) {
    const part = data.subarray(i * chunk, (i + 1) * chunk);
    assert.ok(part.every((x) => x === i + 1), `chunk ${i} holds its own bytes`);
  }
  assert.ok(allocated.size <= 3, `buffers reused (${allocated.size} allocated for ${chunks} chunks)`);
  // One flush at a time, each waiting for the disk: how many fit depends on the disk, but not none.
  assert.ok(stats.flushes >= 1, `flushed in the background while writing (${stats.flushes} flushes)`);
});
