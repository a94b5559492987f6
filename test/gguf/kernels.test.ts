/**
 * The element kernels against llama.cpp's converter (gguf-py over numpy, recorded by
 * tools/testing/gguf-kernels-fixture.py): Q8_0 blocks bit for bit over rounding ties, zeros, negative maxima,
 * float16-subnormal, underflowing and overflowing scales; F16 and BF16 over half-way cases and infinities.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { encode, quantizeQ8_0 } from '../../libs/gguf/quant';
import { encodeTensor } from '../../libs/gguf/stream';
import { FIXTURES } from '../helpers/tmp';

const fx = JSON.parse(readFileSync(join(FIXTURES, 'gguf', 'kernels.json'), 'utf8')) as Record<string, string>;
const floats = (b64: string) => {
  const b = Buffer.from(b64, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
};
const firstDiff = (a: Buffer, b: Buffer) => {
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return i;
};

test('Q8_0 blocks equal gguf-py\'s, bit for bit', () => {
  const x = floats(fx.x!);
  const want = Buffer.from(fx.q8_0!, 'base64');
  const got = Buffer.alloc(want.length);
  quantizeQ8_0(x, got);
  assert.equal(firstDiff(got, want), want.length, `first difference at byte ${firstDiff(got, want)} (block ${Math.floor(firstDiff(got, want) / 34)})`);
  // The fixture holds the cases it claims: a tie block (scale 1.0 = 0x3c00) and a zero block (scale 0).
  assert.equal(want.readUInt16LE(0), 0x3c00);
  assert.equal(want.readUInt16LE(34), 0);
  assert.ok(want.subarray(36, 68).every((v) => v === 0));
});

for (const type of ['F16', 'BF16'] as const) {
  test(`${type} equals gguf-py's, bit for bit (half-way cases, overflow, infinities)`, () => {
    const y = floats(fx.y!);
    const want = Buffer.from(fx[type.toLowerCase()]!, 'base64');
    const got = Buffer.alloc(want.length);
    encode(y, type, got);
    assert.equal(firstDiff(got, want), want.length, `first difference at byte ${firstDiff(got, want)}`);
  });
}

test('a streamed tensor in uneven source chunks encodes as the whole does', async () => {
  const x = floats(fx.x!);
  const whole = Buffer.alloc((x.length / 32) * 34);
  quantizeQ8_0(x, whole);
  const src = Buffer.from(x.buffer, x.byteOffset, x.byteLength);
  // Chunks that cut blocks and values' groups at odd places (whole float32 values only).
  async function* chunks() {
    let at = 0;
    for (const n of [4, 12, 124, 4, 1000, 36, 400]) {
      if (at >= src.length) break;
      yield { data: src.subarray(at, Math.min(at + n, src.length)), dtype: 'F32' };
      at += n;
    }
    if (at < src.length) yield { data: src.subarray(at), dtype: 'F32' };
  }
  const out: Buffer[] = [];
  for await (const b of encodeTensor(chunks(), { type: 'Q8_0', rowLength: 32 })) out.push(b);
  assert.ok(Buffer.concat(out).equals(whole));
});

test('the q/k permutation moves row (a, b) of each head to (b, a), as the converter\'s reshape and swapaxes do', async () => {
  // 2 heads of 4 rows, rows of 1 value: head rows [0 1 2 3] -> [0 2 1 3].
  const v = new Float32Array([0, 1, 2, 3, 4, 5, 6, 7]);
  const out: Buffer[] = [];
  async function* one() {
    yield { data: Buffer.from(v.buffer), dtype: 'F32' };
  }
  for await (const b of encodeTensor(one(), { type: 'F32', rowLength: 1, permuteGroupRows: 4 })) out.push(b);
  const got = Buffer.concat(out);
  assert.deepEqual([...new Float32Array(got.buffer, got.byteOffset, 8)], [0, 2, 1, 3, 4, 6, 5, 7]);
});

test('encoding is streamed: the first bytes come out before the whole tensor is read', async () => {
  const total = 8 << 20; // values, 8x what the encoder holds
  const chunk = 1 << 18;
  let read = 0;
  let readAtFirstOutput = -1;
  async function* src() {
    for (let at = 0; at < total; at += chunk) {
      read += chunk;
      yield { data: Buffer.alloc(chunk * 2), dtype: 'BF16' };
    }
  }
  let bytes = 0;
  for await (const b of encodeTensor(src(), { type: 'Q8_0', rowLength: 4096 })) {
    if (readAtFirstOutput < 0) readAtFirstOutput = read;
    bytes += b.length;
  }
  assert.equal(bytes, (total / 32) * 34);
  assert.ok(readAtFirstOutput > 0 && readAtFirstOutput <= (1 << 20) + chunk, `first output after ${readAtFirstOutput} values read`);
});
