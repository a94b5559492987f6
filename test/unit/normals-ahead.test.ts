import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { noiseApplier, TorchDrawSeeker } from '../../libs/noise/noise';
import { normalsAhead, normalsAheadStats, NORMALS_AHEAD_BATCH, setNormalsAheadMin, setNormalsAheadThreads, SLOT_VALUES, SLOTS } from '../../libs/noise/normals-ahead';
import { availableParallelism } from 'node:os';
import { streamNormals } from '../../libs/noise/noise';
import { encodeFloats } from '../../libs/safetensors/dtype';
import { setNoiseKernel } from '../../libs/gates/normals-native';
import type { SourcePart } from '../../libs/plan/types';

// Past the ring's end (it wraps), with a last slot that is not full.
const N = SLOT_VALUES * (SLOTS + 2) + 12_345;

const part = (n: number, stream: string): SourcePart => ({
  kind: 'source', model: 'm', tensor: 't', file: 'f', offset: 0, byteLength: n * 2, dtype: 'BF16', shape: [n],
  noise: { scale: 0.02, seed: 7, stream },
});

function weights(n: number): Buffer {
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = Math.sin(i * 0.37) * (1 + (i % 7));
  return encodeFloats(v, 'BF16');
}

/** The tensor noised in chunks of `values` values; `ahead`: through the generator thread, else on this one. */
function noised(src: Buffer, stream: string, values: number, ahead: boolean): Buffer {
  const was = setNormalsAheadMin(ahead ? 1 : Number.MAX_SAFE_INTEGER);
  try {
    const a = noiseApplier(part(src.length / 2, stream), () => new TorchDrawSeeker(7))!;
    const out: Buffer[] = [];
    try {
      for (let at = 0; at < src.length; at += values * 2) out.push(a.applyBytes(src.subarray(at, Math.min(src.length, at + values * 2))));
    } finally {
      a.close();
    }
    return Buffer.concat(out);
  } finally {
    setNormalsAheadMin(was);
  }
}

test('normals generated ahead in the worker thread are the stream\'s own, in any chunking, across the ring\'s wrap', async () => {
  const src = weights(N);
  const served = normalsAheadStats.streams;
  const here = noised(src, 'noise/expert/1/0/w1', 1 << 20, false);
  assert.equal(normalsAheadStats.streams, served, 'generated here');
  assert.ok(noised(src, 'noise/expert/1/0/w1', 1 << 20, true).equals(here), 'chunks of 1 Mi values');
  assert.ok(noised(src, 'noise/expert/1/0/w1', 77_777, true).equals(here), 'chunks that straddle slots');
  // The WebAssembly noise kernel reads them by copies, the native one where they lie: the same bytes.
  setNoiseKernel('wasm');
  try {
    assert.ok(noised(src, 'noise/expert/1/0/w1', 77_777, true).equals(here), 'WebAssembly kernels');
  } finally {
    setNoiseKernel(undefined);
  }
  assert.equal(normalsAheadStats.streams, served + 3, 'all three through the generator thread');
  const was = setNormalsAheadMin(1);
  // The raw stream too, read through the reader directly in odd pieces.
  const want = new Float32Array(N);
  streamNormals(7, 'noise/expert/2/0/w2', N).read(want);
  const r = normalsAhead(7, 'noise/expert/2/0/w2', N)!;
  assert.ok(r, 'the generator thread serves it');
  const got = new Float32Array(N);
  // By turns copied out (read) and looked at where they lie in the ring (view: at most a slot's rest at a time).
  for (let at = 0, k = 1, turn = 0; at < N; k = (k * 7) % 1_000_003, turn++) {
    const len = Math.min(N - at, k, NORMALS_AHEAD_BATCH);
    await r.ready(len);
    if (turn % 2 === 0) r.read(got.subarray(at, at + len));
    else for (let o = 0; o < len; ) {
      const v = r.view(len - o);
      assert.ok(v.length >= 1 && v.length <= Math.min(len - o, SLOT_VALUES));
      got.set(v, at + o);
      o += v.length;
    }
    at += len;
  }
  r.close();
  setNormalsAheadMin(was);
  assert.deepEqual(Buffer.from(got.buffer), Buffer.from(want.buffer));
});

test('a stream abandoned part way frees the generator thread for the next; a second stream while one is open is generated here', () => {
  const was = setNormalsAheadMin(1);
  try {
    const first = normalsAhead(7, 'noise/expert/1/0/w1', N)!;
    first.read(new Float32Array(SLOT_VALUES + 5));
    assert.equal(normalsAhead(7, 'noise/expert/1/0/w3', N), null, 'the thread is busy: the caller generates them itself');
    first.close(); // abandoned (a failed write): the thread stops producing it
    const next = normalsAhead(3, 'noise/expert/1/0/w3', 1000)!;
    assert.ok(next, 'the thread serves the next stream');
    const got = new Float32Array(1000);
    next.read(got);
    next.close();
    const want = new Float32Array(1000);
    streamNormals(3, 'noise/expert/1/0/w3', 1000).read(want);
    assert.deepEqual(got, want);
  } finally {
    setNormalsAheadMin(was);
  }
  assert.equal(normalsAhead(7, 'small', 1000), null, 'below the threshold: generated here');
});

test('a process whose only work is waiting for normals from the generator thread stays alive until it has them (it ended silently, exit code 0, its write unfinished)', () => {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(__dirname, '..', 'helpers', 'lonely-normals.ts')], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'done\n');
});

test('one, two or three generator threads taking turns at the slots give the stream\'s values bit for bit; two by default where there are two cores', async () => {
  const was = setNormalsAheadMin(1);
  const n = SLOT_VALUES * (SLOTS + 3) + 4_321; // past the ring's wrap, a short last slot
  const want = new Float32Array(n);
  streamNormals(11, 'noise/expert/3/1/w2', n).read(want);
  const threadsBefore = await setNormalsAheadThreads(1);
  try {
    assert.equal(threadsBefore, Math.min(2, availableParallelism()));
    for (const threads of [1, 2, 3]) {
      await setNormalsAheadThreads(threads);
      const r = normalsAhead(11, 'noise/expert/3/1/w2', n)!;
      assert.ok(r, `${threads} threads serve it`);
      assert.equal(normalsAheadStats.threads, threads);
      const got = new Float32Array(n);
      for (let at = 0, k = 3; at < n; k = (k * 13) % 900_001) {
        const len = Math.min(n - at, k + 1, NORMALS_AHEAD_BATCH);
        await r.ready(len);
        r.read(got.subarray(at, at + len));
        at += len;
      }
      r.close();
      const bad = got.findIndex((v, i) => !Object.is(v, want[i]));
      assert.equal(bad, -1, `${threads} threads: value ${bad} (slot ${Math.floor(bad / SLOT_VALUES)}) differs`);
    }
  } finally {
    await setNormalsAheadThreads(threadsBefore);
    setNormalsAheadMin(was);
  }
});

test('a stream on one thread right after an abandoned one on two gets the stream\'s values', async () => {
  const was = setNormalsAheadMin(1);
  const threadsBefore = await setNormalsAheadThreads(2);
  const n = SLOT_VALUES * 6 + 100;
  const want = new Float32Array(n);
  streamNormals(5, 'noise/after', n).read(want);
  try {
    for (let i = 0; i < 4; i++) {
      const first = normalsAhead(5, `noise/abandoned/${i}`, SLOT_VALUES * 40)!;
      assert.equal(normalsAheadStats.threads, 2);
      first.read(new Float32Array(SLOT_VALUES + 1 + i * 1000));
      first.close(); // both threads may be mid-slot
      const next = normalsAhead(5, 'noise/after', n, 1)!;
      assert.ok(next, 'served');
      assert.equal(normalsAheadStats.threads, 1);
      const got = new Float32Array(n);
      for (let at = 0; at < n; at += 100_000) {
        const len = Math.min(100_000, n - at);
        await next.ready(len);
        next.read(got.subarray(at, at + len));
      }
      next.close();
      const bad = got.findIndex((v, j) => !Object.is(v, want[j]));
      assert.equal(bad, -1, `round ${i}: value ${bad} differs`);
    }
  } finally {
    await setNormalsAheadThreads(threadsBefore);
    setNormalsAheadMin(was);
  }
});
