import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { removeDeadWorkFolders } from '../../libs/pipeline';
import { processStartedAt } from '../../libs/util/process';
import { join } from 'node:path';
import { runWrite } from '../../libs/stages/write';
import { newGates } from '../../libs/gates';
import { byteFraction, progressReporter } from '../../libs/util/progress';
import type { MergePlan } from '../../libs/plan/types';
import { leftoverFolder, tempDir, TINY } from '../helpers/tmp';

const plan = (file: string): MergePlan => ({
  version: 1,
  architecture: 'Mixtral',
  layout: 'classic',
  outDtype: null,
  config: { model_type: 'mixtral' },
  models: [{ key: 'k', ref: 'base', dir: TINY('a') }],
  tensors: [
    { name: 'zeros', dtype: 'F32', shape: [4], parts: [{ kind: 'zeros', elements: 4 }], group: 'base' },
    { name: 'broken', dtype: 'F32', shape: [4], parts: [{ kind: 'source', model: 'k', tensor: 't', file, offset: 0, byteLength: 16, dtype: 'F32', shape: [4] }], group: 'base' },
  ],
  maxShardBytes: 1,
  shardOrder: 'reference',
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
    leftoverFolder(join(d, `.out.tmp-${other.pid}-abcd1234`), other.pid!);
    leftoverFolder(join(d, '.out.tmp-999999999-abcd1234'), 999999999);
    leftoverFolder(join(d, `.out.tmp-${process.pid}-abcd1234`), process.pid);
    if (processStartedAt(other.pid!) !== null) {
      leftoverFolder(join(d, `.out.tmp-${other.pid}-0123abcd`), other.pid!);
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

test("start-up cleanup removes only folders that prove they are ours: a user's folder or a link named like ours stays", async () => {
  const d = tempDir();
  const src = join(d, 'src.bin');
  writeFileSync(src, Buffer.alloc(16));
  const dead = 999999999;
  // A user's folder named like our work folders: no marker, a marker naming another folder or pid, a link.
  const users = [`.out.tmp-${dead}-abcd1234`, `.out.old-${dead}-abcd1234`, `.out.tmp-${dead}-0000aaaa`, `.out.tmp-${dead}-1111bbbb`];
  mkdirSync(join(d, users[0]!));
  writeFileSync(join(d, users[0]!, 'thesis.tex'), 'mine');
  mkdirSync(join(d, users[1]!));
  writeFileSync(join(d, users[1]!, 'notes.md'), 'mine');
  leftoverFolder(join(d, users[2]!), dead, '.out.tmp-1-ffffffff');
  leftoverFolder(join(d, users[3]!), 12345);
  // A link named like ours whose target holds a valid marker for the link's name: never followed.
  const target = leftoverFolder(join(d, 'precious'), dead, `.out.tmp-${dead}-2222cccc`);
  writeFileSync(join(target, 'data'), 'mine');
  symlinkSync(target, join(d, `.out.tmp-${dead}-2222cccc`));
  // One of ours, for contrast.
  leftoverFolder(join(d, `.out.tmp-${dead}-3333dddd`), dead);
  await runWrite(plan(src), { ...base, outPath: join(d, 'out') });
  assert.deepEqual(readdirSync(d).sort(), [...users, `.out.tmp-${dead}-2222cccc`, 'out', 'precious', 'src.bin'].sort());
  assert.equal(readFileSync(join(d, users[0]!, 'thesis.tex'), 'utf8'), 'mine');
  assert.equal(readFileSync(join(target, 'data'), 'utf8'), 'mine');

  // The merge's own work folders in $TMPDIR follow the same rule.
  const tmp = tempDir();
  mkdirSync(join(tmp, `moe-forge-${dead}-AbCdEf`));
  writeFileSync(join(tmp, `moe-forge-${dead}-AbCdEf`, 'keep'), 'mine');
  const linkTarget = leftoverFolder(join(tmp, 'elsewhere'), dead, `moe-forge-${dead}-LiNkEd`);
  symlinkSync(linkTarget, join(tmp, `moe-forge-${dead}-LiNkEd`));
  leftoverFolder(join(tmp, `moe-forge-${dead}-OuRsXx`), dead);
  await removeDeadWorkFolders(tmp);
  assert.deepEqual(readdirSync(tmp).sort(), ['elsewhere', `moe-forge-${dead}-AbCdEf`, `moe-forge-${dead}-LiNkEd`]);
  assert.ok(existsSync(join(linkTarget, '.moe-forge-work')));
});

test("the write's bar counts in the unit that fits the model: kB and MB, never 0.00/0.00 GB", async () => {
  assert.equal(byteFraction(16, 32), '16/32 B');
  assert.equal(byteFraction(1234, 575_000), '1.2/575.0 kB');
  assert.equal(byteFraction(3_000_000, 12_500_000), '3.0/12.5 MB');
  assert.equal(byteFraction(2_070_000_000, 2_540_000_000), '2.07/2.54 GB');
  const d = tempDir();
  const src = join(d, 'src.bin');
  writeFileSync(src, Buffer.alloc(16));
  const writes: string[] = [];
  const tty = { isTTY: true, write: (x: string) => writes.push(x) } as unknown as NodeJS.WriteStream;
  const saved = process.env.CI;
  delete process.env.CI;
  try {
    await runWrite(plan(src), { ...base, outPath: join(d, 'out'), progress: progressReporter('writing', tty) });
  } finally {
    if (saved !== undefined) process.env.CI = saved;
  }
  assert.ok(writes.length > 0);
  for (const w of writes.filter((x) => x.startsWith('\r'))) assert.match(w, /\] \d+\/32 B, \d+ MB\/s$/);
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

test('a float64 source with no output dtype is written as it is; a scale on one is refused, naming the tensor', async () => {
  const d = tempDir();
  const src = join(d, 'src.bin');
  const values = Buffer.from(new Float64Array([1.5, -2.25, 1e300, Math.PI]).buffer);
  writeFileSync(src, values);
  const f64 = (scale?: number): MergePlan => ({
    ...plan(src),
    maxShardBytes: 0,
    tensors: [{ name: 'w', dtype: 'F64', shape: [4], parts: [{ kind: 'source', model: 'k', tensor: 't', file: src, offset: 0, byteLength: 32, dtype: 'F64', shape: [4], ...(scale === undefined ? {} : { scale }) }], group: 'base' }],
  });
  await runWrite(f64(), { ...base, outPath: join(d, 'out') });
  const shard = readFileSync(join(d, 'out', 'model.safetensors'));
  assert.deepEqual(shard.subarray(shard.length - 32), values);
  await assert.rejects(runWrite(f64(0.5), { ...base, outPath: join(d, 'scaled') }), /w.*residual_scale on a F64 tensor to float64 is not supported/);
});
