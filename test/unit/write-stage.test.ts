import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { processStartedAt } from '../../libs/util/process';
import { join } from 'node:path';
import { runWrite } from '../../libs/stages/write';
import { newGates } from '../../libs/gates';
import { progressReporter } from '../../libs/stages/progress';
import type { MergePlan } from '../../libs/plan/types';
import { tempDir, TINY } from '../helpers/tmp';

const plan = (file: string): MergePlan => ({
  version: 1,
  architecture: 'Mixtral',
  layout: 'classic',
  outDtype: null,
  config: { model_type: 'mixtral' },
  models: [{ key: 'k', ref: 'base', dir: TINY('a') }],
  tensors: [
    { name: 'zeros', dtype: 'F32', shape: [4], parts: [{ kind: 'zeros', elements: 4 }] },
    { name: 'broken', dtype: 'F32', shape: [4], parts: [{ kind: 'source', model: 'k', tensor: 't', file, offset: 0, byteLength: 16, dtype: 'F32', shape: [4] }] },
  ],
  maxShardBytes: 1,
  warnings: [],
});

const base = { gates: newGates(1, 1, 1), recipeText: 'base_model: x\nexperts: []\n', tokenizerDir: TINY('a'), copyTokenizer: false, overwrite: false, writeRecipe: false };

test('a write that fails part-way leaves no output folder and no temporary folder', async () => {
  const d = tempDir();
  const out = join(d, 'out');
  await assert.rejects(runWrite(plan(join(d, 'missing.bin')), { ...base, outPath: out }), /missing\.bin/);
  assert.ok(!existsSync(out));
  assert.deepEqual(readdirSync(d), []);
});

test("a dead run's temporary folders are removed by the next write; a live one's are kept", async () => {
  const d = tempDir();
  const src = join(d, 'src.bin');
  writeFileSync(src, Buffer.alloc(16));
  // Another live process (a writer running now), a dead one, this process (left by an earlier run with the same
  // pid: in a container both are often pid 1), and a live pid that started after its folder was made (reused).
  const other = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 300));
  try {
    mkdirSync(join(d, `.out.tmp-${other.pid}-abcd1234`));
    mkdirSync(join(d, '.out.tmp-999999999-abcd1234'));
    mkdirSync(join(d, `.out.tmp-${process.pid}-abcd1234`));
    if (processStartedAt(other.pid!) !== null) {
      mkdirSync(join(d, `.out.tmp-${other.pid}-0123abcd`));
      const old = new Date(Date.now() - 3_600_000);
      utimesSync(join(d, `.out.tmp-${other.pid}-0123abcd`), old, old);
    }
    const r = await runWrite(plan(src), { ...base, outPath: join(d, 'out') });
    assert.equal(r.shards, 2);
    assert.deepEqual(readdirSync(d).sort(), [`.out.tmp-${other.pid}-abcd1234`, 'out', 'src.bin']);
  } finally {
    other.kill();
  }
});

test('progress: a bar redrawn in place on a terminal, a line every few seconds elsewhere', () => {
  const writes: string[] = [];
  const stream = (isTTY: boolean) => ({ isTTY, write: (s: string) => writes.push(s) }) as unknown as NodeJS.WriteStream;
  const saved = process.env.CI;
  delete process.env.CI;
  try {
    const tty = progressReporter('states', stream(true));
    tty.update(1, 4, 'layer 1/2');
    tty.update(4, 4, 'layer 2/2');
    tty.end();
    assert.deepEqual(writes, ['\rstates [######..................] layer 1/2', '\rstates [########################] layer 2/2', '\n']);
    writes.length = 0;
    const quick = progressReporter('states', stream(false), 60_000);
    quick.update(1, 4, 'a');
    quick.update(4, 4, 'b');
    assert.deepEqual(writes, [], 'short work prints nothing off a terminal');
    const slow = progressReporter('states', stream(false), 0);
    slow.update(1, 4, 'a');
    slow.update(4, 4, 'c');
    assert.equal(writes.length, 2);
    assert.match(writes[0]!, /^states: a \(\d+\.\d s\)\n$/);
    assert.match(writes[1]!, /^states: c /);
  } finally {
    if (saved !== undefined) process.env.CI = saved;
  }
});
