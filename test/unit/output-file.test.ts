/**
 * Output files written straight to the disk (O_DIRECT) where the file system takes it: bytes gathered into aligned
 * staging blocks, appended or put at their places in any order or copied from another file, the pages a run covers
 * in part written at the end over what the file holds; the same bytes as buffered writes, a file system that
 * refuses direct writes after the open gets plain ones, and a source that ends early is named.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DIRECT_ALIGN, DIRECT_MIN_BYTES, FileRange, openOutputFile, readSafetensorsHeader, refusedDirectOpens, refusedDirectReads, refusedDirectWrites, STAGE_BYTES, writeShard } from '../../libs/safetensors';
import { tempDir } from '../helpers/tmp';
import { directIn } from '../helpers/direct-io';

const d = tempDir('moe-forge-output-file-');

const directHere = () => directIn(d);

/** n bytes of a pattern that differs at every offset mod 251 (misplaced bytes show). */
const pattern = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed * 13 + (i >> 12)) % 251));

test('a file appended through openOutputFile holds exactly the bytes put, across staging blocks, with an unaligned length; direct where the file system takes it', async () => {
  const src = join(d, 'src.bin');
  const srcBytes = pattern(STAGE_BYTES + 12345, 3);
  writeFileSync(src, srcBytes);
  // Pieces that straddle the staging blocks: small, unaligned, larger than a block, and ranges of a file.
  const a = pattern(1001, 1);
  const b = pattern(STAGE_BYTES + 777, 2);
  const expected = Buffer.concat([a, srcBytes.subarray(5, 5 + STAGE_BYTES + 100), b, srcBytes.subarray(17, 4113)]);
  // A file known to be small is written buffered (a router shard: staging would cost more than the page cache).
  const small = await openOutputFile(join(d, 'small.bin'), { size: DIRECT_MIN_BYTES - 1 });
  assert.equal(small.direct, false);
  await small.close();
  for (const direct of [true, false]) {
    const f = join(d, `out-${direct}.bin`);
    writeFileSync(f, 'old contents that are longer than nothing');
    const out = await openOutputFile(f, { direct });
    assert.equal(out.direct, direct && directHere(), 'direct only where asked and possible');
    const fd = openSync(src, 'r');
    try {
      await out.put(a);
      await out.putRange(fd, { file: src, offset: 5, length: STAGE_BYTES + 100, tensor: 't' });
      await out.put(b);
      await out.putRange(fd, { file: src, offset: 17, length: 4096, tensor: 't' });
      assert.equal(await out.finish(), expected.length);
    } finally {
      closeSync(fd);
      await out.close();
    }
    assert.equal(expected.length % DIRECT_ALIGN === 0, false, 'the test needs a length the last block pads');
    assert.equal(statSync(f).size, expected.length, 'truncated to the bytes put, no padding left');
    assert.ok(readFileSync(f).equals(expected), `same bytes (${direct ? 'direct' : 'buffered'})`);
  }
});

test('writeShard writes the same shard direct and buffered, and a file system that refuses direct writes after the open gets plain ones', async () => {
  const src = join(d, 'weights.bin');
  writeFileSync(src, pattern(3 * STAGE_BYTES, 5));
  const specs = [
    { name: 'a', dtype: 'U8', shape: [3, 1000] },
    { name: 'b', dtype: 'U8', shape: [2 * STAGE_BYTES + 3] },
    { name: 'c', dtype: 'BF16', shape: [7] },
  ];
  const produce = (t: { name: string }) =>
    t.name === 'a' ? [pattern(3000, 9)] : t.name === 'b' ? [new FileRange(src, 1, STAGE_BYTES, 'b'), new FileRange(src, 1 + STAGE_BYTES, STAGE_BYTES + 3, 'b')] : [pattern(14, 4)];
  const write = async (name: string, direct: boolean) => {
    const f = join(d, name);
    assert.equal(await writeShard(f, specs, produce, { direct, directMinBytes: 0 }), statSync(f).size);
    return readFileSync(f);
  };
  const buffered = await write('buffered.safetensors', false);
  assert.ok((await write('direct.safetensors', true)).equals(buffered));
  refusedDirectWrites.left = 1;
  try {
    assert.ok((await write('refused.safetensors', true)).equals(buffered), 'the refused block and the rest written plainly');
    if (directHere()) assert.equal(refusedDirectWrites.left, 0, 'the direct write was tried and refused');
  } finally {
    refusedDirectWrites.left = 0;
  }
  const h = await readSafetensorsHeader(join(d, 'direct.safetensors'));
  assert.deepEqual([...h.tensors.keys()].sort(), ['a', 'b', 'c']);
});

test('a direct write whose source file ends early names the file and tensor', async () => {
  const src = join(d, 'short.bin');
  writeFileSync(src, pattern(STAGE_BYTES + 10, 1));
  await assert.rejects(
    writeShard(join(d, 'short.safetensors'), [{ name: 'w', dtype: 'U8', shape: [STAGE_BYTES + 100] }], () => [new FileRange(src, 0, STAGE_BYTES + 100, 'w')], { direct: true, directMinBytes: 0 }),
    (e: Error) => e.message === `${src}, tensor w: file ended while copying ${STAGE_BYTES + 100} bytes`,
  );
});

/** `writes` applied in order to `length` zero bytes (or to `base`): what the file must hold. */
function applied(length: number, writes: [number, Buffer][], base?: Buffer): Buffer {
  const want = base ? Buffer.from(base) : Buffer.alloc(length);
  for (const [at, b] of writes) b.copy(want, at);
  return want;
}

// Runs as a GGUF pass makes them: a header, segments at unaligned places with padding between, a run put in
// several calls that crosses staging blocks, one inside a single page, pieces on both sides of a page edge, and
// bytes put again later (over pages written whole, over a page's edge, and whole pages over an edge).
const L = 2 * STAGE_BYTES + 50_000;
const placed: [number, Buffer][] = [
  [0, pattern(1234, 1)],
  [STAGE_BYTES + 4000, pattern(9000, 2)],
  [1280, pattern(STAGE_BYTES - 7, 3)],
  [1280 + STAGE_BYTES - 7, pattern(STAGE_BYTES + 33, 4)],
  [2 * STAGE_BYTES + 40_000, pattern(100, 5)],
  [2 * STAGE_BYTES + 40_100, pattern(32, 6)],
  [2 * STAGE_BYTES + 8190, pattern(5, 7)],
  [300, pattern(20_000, 8)],
  [2 * STAGE_BYTES + 49_990, pattern(10, 9)],
  // Whole pages over the page that the 100 bytes at 40_000 covered in part: the later bytes win.
  [2 * STAGE_BYTES + 36_000, pattern(9000, 10)],
];

test('bytes put at their places in any order give the file those writes make, direct, buffered and after a refused direct write', async () => {
  const want = applied(L, placed);
  for (const [name, opts, refuse] of [['buffered', { direct: false }, 0], ['direct', { direct: true, directMinBytes: 0 }, 0], ['refused', { direct: true, directMinBytes: 0 }, 1]] as const) {
    const f = join(d, `placed-${name}.bin`);
    refusedDirectWrites.left = refuse;
    try {
      const out = await openOutputFile(f, { ...opts, create: 'exclusive', length: L });
      assert.equal(out.direct, opts.direct && directHere());
      try {
        for (const [at, b] of placed) await out.putAt(at, b);
        assert.equal(await out.finish(), L, 'the end of the last byte put');
      } finally {
        await out.close();
      }
      if (refuse && directHere()) assert.equal(refusedDirectWrites.left, 0, 'the direct write was tried and refused');
    } finally {
      refusedDirectWrites.left = 0;
    }
    assert.equal(statSync(f).size, L);
    assert.ok(readFileSync(f).equals(want), `same bytes (${name})`);
  }
});

test('an existing file keeps the bytes no put covers, beside those put on the same pages', async () => {
  const before = pattern(L, 11);
  const writes = placed.slice(1, 5);
  for (const direct of [true, false]) {
    const f = join(d, `existing-${direct}.bin`);
    writeFileSync(f, before);
    const out = await openOutputFile(f, { direct, directMinBytes: 0, create: 'existing' });
    try {
      for (const [at, b] of writes) await out.putAt(at, b);
      await out.finish();
    } finally {
      await out.close();
    }
    assert.ok(readFileSync(f).equals(applied(L, writes, before)), `previous bytes kept around the writes (${direct ? 'direct' : 'buffered'})`);
  }
});

test('an exclusive output file refuses one that exists, and a place that is not an offset is refused', async () => {
  const f = join(d, 'taken.bin');
  writeFileSync(f, 'a file we did not write');
  for (const direct of [true, false]) await assert.rejects(openOutputFile(f, { direct, directMinBytes: 0, create: 'exclusive' }), (e: NodeJS.ErrnoException) => e.code === 'EEXIST');
  assert.equal(readFileSync(f, 'utf8'), 'a file we did not write');
  for (const direct of [true, false]) {
    const out = await openOutputFile(join(d, `bad-place-${direct}.bin`), { direct, directMinBytes: 0 });
    try {
      await assert.rejects(out.putAt(-1, Buffer.alloc(1)), (e: Error) => e.message === 'output offset -1: a non-negative integer is needed');
      await assert.rejects(out.putAt(1.5, Buffer.alloc(1)), (e: Error) => e.message === 'output offset 1.5: a non-negative integer is needed');
    } finally {
      await out.close();
    }
  }
});

test('ranges copied from another file land at their offsets, bytes put after them win, and a range past its end is named', async () => {
  const src = join(d, 'previous.bin');
  const before = pattern(L, 12);
  writeFileSync(src, before);
  // Two ranges on touching pages, one across staging blocks, one to the file's unaligned end.
  const ranges = [
    { offset: 100, length: 5000 },
    { offset: 5200, length: 30 },
    { offset: STAGE_BYTES + 10, length: STAGE_BYTES + 5 },
    { offset: L - 777, length: 777 },
  ];
  const after: [number, Buffer][] = [[STAGE_BYTES + 4000, pattern(9000, 13)]];
  // Direct, buffered, and direct where the source's file system refuses a direct read after the open.
  for (const [direct, refuse] of [[true, 0], [false, 0], [true, 2]] as const) {
    const f = join(d, `copied-${direct}-${refuse}.bin`);
    const out = await openOutputFile(f, { direct, directMinBytes: 0, create: 'exclusive', length: L });
    refusedDirectReads.left = refuse;
    try {
      await out.copyFrom(src, ranges);
      for (const [at, b] of after) await out.putAt(at, b);
      await out.finish();
      if (refuse && directHere()) assert.equal(refusedDirectReads.left, refuse - 1, 'one direct read refused, the rest plain');
    } finally {
      refusedDirectReads.left = 0;
      await out.close();
    }
    const got = readFileSync(f);
    assert.equal(got.length, L);
    const want = applied(L, [...ranges.map((r) => [r.offset, before.subarray(r.offset, r.offset + r.length)] as [number, Buffer]), ...after]);
    const pageOf = (i: number) => Math.floor(i / DIRECT_ALIGN);
    const touched = new Set<number>();
    for (const [at, len] of [...ranges.map((r) => [r.offset, r.length]), ...after.map(([at, b]) => [at, b.length])]) for (let p = pageOf(at); p <= pageOf(at + len - 1); p++) touched.add(p);
    const inRange = (i: number) => ranges.some((r) => i >= r.offset && i < r.offset + r.length) || after.some(([at, b]) => i >= at && i < at + b.length);
    let diffs = 0;
    for (let i = 0; i < L; i++) {
      // Direct, bytes beside a range on its pages may come along; every other byte is as the writes make it.
      if (got[i] !== want[i] && !(direct && touched.has(pageOf(i)) && !inRange(i) && got[i] === before[i])) diffs++;
    }
    assert.equal(diffs, 0, `copied and put bytes in place (${direct ? 'direct' : 'buffered'})`);
  }
  for (const direct of [true, false]) {
    const out = await openOutputFile(join(d, `copy-short-${direct}.bin`), { direct, directMinBytes: 0 });
    try {
      await assert.rejects(out.copyFrom(src, [{ offset: L - 10, length: 20 }]), (e: Error) => e.message === `${src}: file ended before byte ${L + 10} while copying it`);
      await assert.rejects(out.copyFrom(src, [{ offset: 5000, length: 10 }, { offset: 10, length: 10 }]), (e: Error) => e.message === 'copied range at 10: ranges must be sorted and apart');
    } finally {
      await out.close();
    }
  }
});

test('a file system that refuses O_DIRECT at the open gets plain writes, for a new file made exclusively too', async () => {
  const want = applied(L, placed);
  for (const create of ['exclusive', 'truncate'] as const) {
    const f = join(d, `open-refused-${create}.bin`);
    refusedDirectOpens.left = 1;
    let out;
    try {
      out = await openOutputFile(f, { direct: true, directMinBytes: 0, create, length: L });
    } finally {
      refusedDirectOpens.left = 0;
    }
    assert.equal(out.direct, false);
    try {
      for (const [at, b] of placed) await out.putAt(at, b);
      await out.finish();
    } finally {
      await out.close();
    }
    assert.ok(readFileSync(f).equals(want), `same bytes (${create})`);
  }
});
