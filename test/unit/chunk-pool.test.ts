import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChunkPool, convertBytes, writeShard, readSafetensorsHeader, streamTensorBytes, type FloatDtype } from '../../libs/safetensors';
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

test('writeShard gives each pooled chunk back only once it is written: a producer refilling them writes every byte right, and a buffered write flushes as it goes', async () => {
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
  await writeShard(f, specs, produce, { pool, flushBytes: 256 << 10, stats, direct: false });
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

test('streamTensorBytes reads ahead: every chunk in order, a truncated file an error from the loop, an early stop leaves no read behind', async () => {
  const d = tempDir();
  const f = join(d, 'data.bin');
  const bytes = Buffer.alloc(1000);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7) & 0xff;
  writeFileSync(f, bytes);
  const loc = (offset: number, byteLength: number) => ({ name: 't', dtype: 'U8', shape: [byteLength], begin: 0, end: byteLength, file: f, offset, byteLength });
  const pool = new ChunkPool(64);
  const got: Buffer[] = [];
  const buffers: ArrayBufferLike[] = [];
  for await (const c of streamTensorBytes(loc(100, 900), 64, 8, pool)) {
    got.push(Buffer.from(c));
    buffers.push(c.buffer);
    pool.give(c);
  }
  assert.deepEqual(got.map((c) => c.length), [...Array(14).fill(64), 4]);
  // Each chunk given back before the next was asked for; yet the next is in another buffer: it was being read already.
  for (let i = 1; i < buffers.length; i++) assert.notEqual(buffers[i], buffers[i - 1], `chunk ${i} was read ahead`);
  assert.ok(Buffer.concat(got).equals(bytes.subarray(100)));
  // Runs past the end of the file: the read ahead fails, and the loop reports it where it gets there.
  const seen: number[] = [];
  await assert.rejects(
    (async () => {
      for await (const c of streamTensorBytes(loc(800, 400), 64, 8)) seen.push(c.length);
    })(),
    /tensor t: file ended while streaming tensor/,
  );
  assert.deepEqual(seen, [64, 64, 64], 'the chunks before the end came through');
  // A consumer that stops after one chunk: the read already started is awaited, the file closed, nothing unhandled.
  for await (const c of streamTensorBytes(loc(0, 1000), 64, 8)) {
    assert.equal(c.length, 64);
    break;
  }
});

test('a pooled chunk casts in place to a dtype no wider, exactly as convertBytes, up to the chunk\'s last byte', () => {
  const chunkBytes = 4096;
  const pool = new ChunkPool(chunkBytes);
  const rnd = (n: number) => {
    const b = Buffer.allocUnsafe(n);
    let x = 12345;
    for (let i = 0; i < n; i++) b[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
    return b;
  };
  const pairs: [string, string][] = [['F32', 'BF16'], ['F32', 'F16'], ['BF16', 'F16'], ['F16', 'BF16']];
  for (const [from, to] of pairs) {
    const size = from === 'F32' ? 4 : 2;
    for (const n of [1, 7, 8, 9, 333, chunkBytes / size]) {
      const src = rnd(n * size);
      const buf = pool.take(src.length);
      src.copy(buf);
      const out = pool.castInPlace(buf, from, to);
      assert.ok(out, `${from} → ${to} runs in place`);
      assert.equal(out.buffer, buf.buffer, 'in the same memory');
      assert.ok(out.equals(convertBytes(src, from, to as FloatDtype)), `${from} → ${to}, ${n} values`);
      pool.give(out);
    }
  }
  const b = pool.take(64);
  assert.equal(pool.castInPlace(b, 'BF16', 'F32'), null, 'widening needs another buffer');
  assert.equal(pool.castInPlace(b.subarray(8), 'F32', 'BF16'), null, 'only a whole chunk from its start');
  assert.equal(pool.castInPlace(Buffer.alloc(64), 'F32', 'BF16'), null, 'not a pooled chunk');
  assert.equal(new ChunkPool(64, 2, { wasm: false }).castInPlace(Buffer.alloc(64), 'F32', 'BF16'), null);
});
