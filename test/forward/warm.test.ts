import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { warmRanges } from '../../libs/forward/run';
import { tempDir } from '../helpers/tmp';

const MB = 1 << 20;

test('warmRanges reads every byte of its ranges a chunk at a time, stops when told, and ends quietly on a file it cannot read', async () => {
  const d = tempDir();
  const file = join(d, 'model.safetensors');
  writeFileSync(file, Buffer.alloc(10 * MB + 3, 7));
  assert.equal(await warmRanges([{ file, offset: 3, byteLength: 6 * MB }, { file, offset: 6 * MB + 3, byteLength: 4 * MB }], () => false, MB), 10 * MB);
  // Told to stop after two chunks: no third read.
  let reads = 0;
  assert.equal(await warmRanges([{ file, offset: 0, byteLength: 10 * MB }], () => reads++ >= 2, MB), 2 * MB);
  // A range past the end reads what is there; a missing file ends the warming without an error.
  assert.equal(await warmRanges([{ file, offset: 9 * MB, byteLength: 4 * MB }], () => false, MB), MB + 3);
  assert.equal(await warmRanges([{ file: join(d, 'gone.safetensors'), offset: 0, byteLength: MB }, { file, offset: 0, byteLength: MB }], () => false, MB), 0);
});
