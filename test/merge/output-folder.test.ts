import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { runWrite } from '../../libs/stages/write';
import { newGates } from '../../libs/gates';
import type { MergePlan } from '../../libs/plan/types';
import { mergekitMoe } from '../helpers/cli';
import { copyModel, leftoverFolder, tempDir, TINY } from '../helpers/tmp';

// The output folder's promises: inputs are never replaced, files a user added survive, links are written through.
const dir = tempDir();
const models = join(dir, 'models');
mkdirSync(models);
for (const n of ['a', 'b'] as const) copyModel(TINY(n), join(models, n));
const recipeText = `base_model: models/a
gate_mode: random
experts:
  - source_model: models/a
    positive_prompts: ["math"]
  - source_model: models/b
    positive_prompts: ["code"]
`;
writeFileSync(join(dir, 'moe.yml'), recipeText);

/** Every file under a folder with its bytes, to show a folder unchanged. */
function snapshot(d: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (p: string, rel: string) => {
    for (const e of readdirSync(p, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(p, e.name), join(rel, e.name));
      else out.set(join(rel, e.name), readFileSync(join(p, e.name)).toString('base64'));
    }
  };
  walk(d, '');
  return out;
}

// The reference's shard split (one model.safetensors for these tiny models), so the folder's files are simple to follow.
const merge = (out: string, extra: Partial<Parameters<typeof mergeRecipe>[0]> = {}) =>
  mergeRecipe({ recipeFile: join(dir, 'moe.yml'), outPath: out, modelBaseDir: dir, cacheDir: join(dir, 'cache'), shardOrder: 'reference', ...extra });

/** A pid that existed and is gone now. */
const deadPid = () => spawnSync(process.execPath, ['-e', '0']).pid!;

test('an output path that is or contains an input model folder or the recipe is refused even with --overwrite', async () => {
  const before = snapshot(dir);
  for (const [out, what] of [
    ['models/a', /output path is the model folder of models\/a \(.*models\/a\); writing there would destroy it, so it is refused even with --overwrite/],
    ['.', /output path contains the model folder of models\/a/],
    ['models', /output path contains the model folder of models\/a/],
  ] as const) {
    const r = await mergekitMoe(['moe.yml', out, '--overwrite'], dir);
    assert.equal(r.exitCode, 1, r.stderr);
    assert.match(r.stderr, what);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  }
  // The recipe alone in a folder: that folder is refused too.
  const solo = join(dir, 'solo');
  mkdirSync(solo);
  writeFileSync(join(solo, 'moe.yml'), recipeText.replaceAll('models/', '../models/'));
  const r = await mergekitMoe(['moe.yml', '.', '--overwrite'], solo);
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /output path contains the recipe \(.*solo\/moe\.yml\)/);
  assert.equal(readFileSync(join(solo, 'moe.yml'), 'utf8'), recipeText.replaceAll('models/', '../models/'));
  const after = snapshot(dir);
  for (const [f, bytes] of before) assert.equal(after.get(f), bytes, `${f} unchanged`);

  // A new folder inside a model folder destroys nothing: allowed, and a rebuild there is allowed too.
  const inner = join(models, 'b', 'moe-out');
  await merge(inner);
  assert.ok(existsSync(join(inner, 'model.safetensors')));
  await merge(inner, { seed: 4 });
});

test('an output path that is a file or lies under a file is refused before any work', async () => {
  writeFileSync(join(dir, 'file.txt'), 'x');
  const logs: string[] = [];
  await assert.rejects(merge(join(dir, 'file.txt'), { log: (l) => logs.push(l) }), /file\.txt: output path is a file, not a folder/);
  await assert.rejects(merge(join(dir, 'file.txt', 'sub', 'out')), /output path .*file\.txt\/sub\/out lies under .*file\.txt, which is a file/);
  assert.deepEqual(logs, [], 'refused at fetch, before any model was even resolved');
  assert.equal(readFileSync(join(dir, 'file.txt'), 'utf8'), 'x');
});

test('files a user added to an output we wrote survive a rebuild; one in the way stops it unless --overwrite', async () => {
  const out = join(dir, 'kept');
  await merge(out);
  const first = readFileSync(join(out, 'model.safetensors'));
  writeFileSync(join(out, 'notes.md'), 'my notes');
  mkdirSync(join(out, 'checkpoint-500'));
  writeFileSync(join(out, 'checkpoint-500', 'optimizer.pt'), 'state');
  await merge(out, { seed: 9 });
  assert.notDeepEqual(readFileSync(join(out, 'model.safetensors')), first, 'the model was rebuilt');
  assert.equal(readFileSync(join(out, 'notes.md'), 'utf8'), 'my notes');
  assert.equal(readFileSync(join(out, 'checkpoint-500', 'optimizer.pt'), 'utf8'), 'state');

  // A sharded rebuild would write model-00001-of-0000N.safetensors, a name the user took.
  writeFileSync(join(out, 'model.safetensors.index.json'), 'mine');
  await assert.rejects(merge(out, { maxShardBytes: 100_000 }), /files you added to the output folder are in the way of this build: model\.safetensors\.index\.json; move them away, or pass --overwrite/);
  assert.equal(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8'), 'mine');
  assert.ok(existsSync(join(out, 'model.safetensors')), 'the previous output is untouched');
  assert.deepEqual(readdirSync(dir).filter((e) => e.includes('.tmp-') || e.includes('.old-')), []);
  await merge(out, { maxShardBytes: 100_000, overwrite: true });
  assert.match(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8'), /weight_map/);
  assert.ok(!existsSync(join(out, 'model.safetensors')), 'our own old shard is gone');
  assert.equal(readFileSync(join(out, 'notes.md'), 'utf8'), 'my notes', 'other added files still survive');
});

test('a symlinked output path is written through: the link survives and the model lands at its target', async () => {
  const disk = join(dir, 'other-disk');
  mkdirSync(disk);
  const target = join(disk, 'moe');
  mkdirSync(target);
  symlinkSync(target, join(dir, 'linked'));
  await merge(join(dir, 'linked'));
  assert.ok(lstatSync(join(dir, 'linked')).isSymbolicLink(), 'the link is still a link');
  assert.ok(existsSync(join(target, 'model.safetensors')));
  await merge(join(dir, 'linked'), { seed: 2 });
  assert.ok(lstatSync(join(dir, 'linked')).isSymbolicLink());
  assert.equal(realpathSync(join(dir, 'linked')), realpathSync(target));
  // A link whose target does not exist yet: the folder is created there.
  symlinkSync(join(disk, 'later'), join(dir, 'dangling'));
  await merge(join(dir, 'dangling'));
  assert.ok(lstatSync(join(dir, 'dangling')).isSymbolicLink());
  assert.ok(existsSync(join(disk, 'later', 'config.json')));
  assert.deepEqual(readdirSync(disk).filter((e) => e.startsWith('.')), [], 'no temporary folder left at the target');
});

test("a killed write's leftovers are cleaned by the next run, even when the output is unchanged", async () => {
  const out = join(dir, 'again');
  await merge(out);
  const dead = deadPid();
  const stale = leftoverFolder(join(dir, `.again.tmp-${dead}-abcd1234`), dead);
  writeFileSync(join(stale, 'model.safetensors'), 'half');
  const logs: string[] = [];
  await merge(out, { log: (l) => logs.push(l) });
  assert.ok(logs.some((l) => /output unchanged/.test(l)), logs.join('\n'));
  assert.ok(!existsSync(stale), 'the stale temporary folder is gone');

  // Killed in the middle of the swap: the output is missing, the previous one (with a user's file) aside.
  writeFileSync(join(out, 'notes.md'), 'mine');
  const aside = join(dir, `.again.old-${dead}-abcd1234`);
  // A swap marks the folder as its work before renaming it aside.
  writeFileSync(join(out, '.moe-forge-work'), JSON.stringify({ tool: 'moe-forge', name: basename(aside), pid: dead }));
  renameSync(out, aside);
  await merge(out, { log: (l) => logs.push(l) });
  assert.ok(!existsSync(aside));
  assert.equal(readFileSync(join(out, 'notes.md'), 'utf8'), 'mine');
  assert.ok(existsSync(join(out, 'model.safetensors')));
  assert.ok(!existsSync(join(out, '.moe-forge-work')), 'the marker does not stay in the restored folder');
});

test('a disk without room for the output is refused before writing, naming the disk and the size', async () => {
  const d = tempDir();
  const huge = 2 ** 50;
  const plan: MergePlan = {
    version: 1, architecture: 'Mixtral', layout: 'classic', outDtype: null, config: { model_type: 'mixtral' },
    models: [{ key: 'k', ref: 'base', dir: TINY('a') }],
    tensors: [{ name: 'zeros', dtype: 'F32', shape: [huge / 4], parts: [{ kind: 'zeros', elements: huge / 4 }], group: 'base' }],
    maxShardBytes: 0, shardOrder: 'grouped', warnings: [],
  };
  await assert.rejects(
    runWrite(plan, { outPath: join(d, 'out'), gates: newGates(1, 1, 1), recipeText: 'x: 1\n', tokenizerDir: TINY('a'), copyTokenizer: false, overwrite: false, writeRecipe: false }),
    /: not enough free space for the output on the disk mounted at \/\S*: 1125899\.91 GB needed, [\d.]+ [GM]B free/,
  );
  assert.deepEqual(readdirSync(d), []);
});

/** Mounts a small tmpfs at `at` (root only); null where this machine does not allow it. */
function mountTmpfs(at: string): (() => void) | null {
  mkdirSync(at, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', at]);
  if (r.status !== 0) return null;
  return () => void spawnSync('umount', ['-l', at]);
}

test('an output path that is a mount point (a Docker volume, a dedicated disk) is written inside it, never renamed', async (t) => {
  const out = join(dir, 'volume');
  const unmount = mountTmpfs(out);
  if (!unmount) return t.skip('mounting a tmpfs needs root');
  try {
    writeFileSync(join(out, 'notes.md'), 'mine');
    // Not ours and not empty: refused as for any folder.
    await assert.rejects(merge(out), /output folder exists, is not empty and was not written by moe-forge/);
    rmSync(join(out, 'notes.md'));
    mkdirSync(join(out, 'lost+found'));
    await merge(out, { maxShardBytes: 100_000, shardOrder: 'grouped' });
    const shards = readdirSync(out).filter((f) => f.endsWith('.safetensors'));
    assert.ok(shards.length > 2, shards.join(' '));
    assert.ok(existsSync(join(out, 'lost+found')), "the volume's lost+found is left alone");
    writeFileSync(join(out, 'notes.md'), 'mine');
    const ino = (f: string) => statSync(join(out, f)).ino;
    const before = new Map(shards.map((f) => [f, ino(f)]));
    const bytes = readFileSync(join(out, 'model.safetensors.index.json'));
    await merge(out, { maxShardBytes: 100_000, shardOrder: 'grouped', seed: 5 });
    assert.notDeepEqual(readFileSync(join(out, 'model.safetensors.index.json')), Buffer.alloc(0));
    assert.deepEqual(readFileSync(join(out, 'model.safetensors.index.json')), bytes, 'same tensor layout');
    const after = readdirSync(out).filter((f) => f.endsWith('.safetensors'));
    assert.deepEqual(after.sort(), shards.sort());
    // Random routers changed with the seed: the router shard was replaced, the expert shards kept.
    assert.ok(after.some((f) => ino(f) !== before.get(f)), 'the router shard was rewritten');
    assert.ok(after.some((f) => ino(f) === before.get(f)), 'unchanged shards were kept');
    assert.equal(readFileSync(join(out, 'notes.md'), 'utf8'), 'mine');
    assert.deepEqual(readdirSync(out).filter((e) => e.startsWith('.') && e !== '.moe-forge.json'), [], 'no work folder left inside');
    assert.deepEqual(readdirSync(dir).filter((e) => e.startsWith('.volume.')), [], 'nothing written beside the mount point');
    const logs: string[] = [];
    await merge(out, { maxShardBytes: 100_000, shardOrder: 'grouped', seed: 5, log: (l) => logs.push(l) });
    assert.ok(logs.some((l) => /output unchanged/.test(l)), logs.join('\n'));
  } finally {
    unmount();
  }
});

test('a stopped in-place swap is never taken as complete: the next run redoes it and removes the work folder', async (t) => {
  const out = join(dir, 'volume2');
  const unmount = mountTmpfs(out);
  if (!unmount) return t.skip('mounting a tmpfs needs root');
  try {
    await merge(out);
    const good = readFileSync(join(out, 'model.safetensors'));
    // What a run killed mid-swap leaves: the stamp marked unfinished, a work folder, a half-moved file.
    const stamp = JSON.parse(readFileSync(join(out, '.moe-forge.json'), 'utf8'));
    writeFileSync(join(out, '.moe-forge.json'), JSON.stringify({ ...stamp, hash: 'unfinished' }));
    writeFileSync(join(out, 'model.safetensors'), 'half');
    const dead = deadPid();
    const work = leftoverFolder(join(out, `.moe-forge.tmp-${dead}-abcd1234`), dead);
    writeFileSync(join(work, 'config.json'), '{}');
    const logs: string[] = [];
    await merge(out, { log: (l) => logs.push(l) });
    assert.ok(!logs.some((l) => /output unchanged/.test(l)), 'an unfinished swap is rebuilt');
    assert.ok(!existsSync(work), 'the stale work folder is gone');
    assert.deepEqual(readFileSync(join(out, 'model.safetensors')), good);
  } finally {
    unmount();
  }
});
