import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { assertMatchesManifest, isWeightFile, manifest, weightSplit } from '../helpers/manifest';
import { mergekitMoe } from '../helpers/cli';
import { FIXTURES, tempDir } from '../helpers/tmp';

const PARITY = join(FIXTURES, 'parity');
const recipeText = readFileSync(join(PARITY, 'mixtral-cheap_embed.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama'));

async function merge(d: string, recipe: string, out: string, extra: Partial<Parameters<typeof mergeRecipe>[0]> = {}) {
  const file = join(d, 'moe.yml');
  writeFileSync(file, recipe);
  return mergeRecipe({ recipeFile: file, outPath: out, modelBaseDir: d, cacheDir: join(d, 'cache'), ...extra });
}

/** Shard file -> inode, and which shard holds each tensor. */
function snapshot(out: string): { inodes: Record<string, number>; holder: Map<string, string>; split: Record<string, string[]> } {
  const split = weightSplit(out);
  const inodes = Object.fromEntries(Object.keys(split).map((f) => [f, statSync(join(out, f)).ino]));
  const holder = new Map(Object.entries(split).flatMap(([f, names]) => names.map((n) => [n, f] as const)));
  return { inodes, holder, split };
}

const isRouter = (n: string) => /\.block_sparse_moe\.gate\.weight$|\.mlp\.gate\.weight$/.test(n);
const expertOf = (n: string) => /\.experts\.(\d+)\./.exec(n)?.[1];

test('grouped shards (default): the routers alone in the first shard, then the base, then each expert in shards of its own', async () => {
  const d = tempDir();
  const out = join(d, 'out');
  await merge(d, recipeText, out, { maxShardBytes: 100_000 });
  const { split } = snapshot(out);
  const files = Object.keys(split);
  assert.ok(files.length > 5, `several shards: ${files}`);
  assert.deepEqual(split[files[0]!]!.sort(), ['model.layers.0.block_sparse_moe.gate.weight', 'model.layers.1.block_sparse_moe.gate.weight']);
  // Every other shard holds one group only: base tensors, or the tensors of one expert.
  const groups = files.slice(1).map((f) => {
    const kinds = new Set(split[f]!.map((n) => (isRouter(n) ? 'router' : expertOf(n) !== undefined ? `expert ${expertOf(n)}` : 'base')));
    assert.equal(kinds.size, 1, `${f} mixes ${[...kinds]}`);
    return [...kinds][0]!;
  });
  // Groups in order, each in consecutive shards.
  assert.deepEqual([...new Set(groups)], ['base', 'expert 0', 'expert 1', 'expert 2']);
  for (let i = 1; i < groups.length; i++) if (groups[i] !== groups[i - 1]) assert.ok(!groups.slice(0, i).includes(groups[i]!), `${groups[i]} split apart`);
  // Same tensors and bytes as the reference's single file, whatever the split.
  await assertMatchesManifest(out, manifest('mixtral-cheap_embed.classic.manifest.json'), 1e-6);
});

test('a prompt edit rewrites only the router shard; a noise_scale edit or an expert swap only that expert\'s shards', async () => {
  const d = tempDir();
  const out = join(d, 'out');
  const first = await merge(d, recipeText, out);
  const s0 = snapshot(out);
  assert.equal(first.shards, 5);
  const routerShard = s0.holder.get('model.layers.0.block_sparse_moe.gate.weight')!;
  const shardOfExpert = (e: string) => s0.holder.get(`model.layers.0.block_sparse_moe.experts.${e}.w1.weight`)!;

  const changed = (before: typeof s0, after: typeof s0) => Object.keys(after.inodes).filter((f) => after.inodes[f] !== before.inodes[f]).sort();

  const promptEdit = recipeText.replace('Once upon a time there was a model', 'Once upon a time there was a merge');
  const r1 = await merge(d, promptEdit, out);
  const s1 = snapshot(out);
  assert.deepEqual(changed(s0, s1), [routerShard]);
  assert.deepEqual({ written: r1.written, kept: r1.kept }, { written: 1, kept: 4 });

  const noise = promptEdit.replace('    residual_scale: 0.5', '    residual_scale: 0.5\n    noise_scale: 0.01');
  await merge(d, noise, out);
  const s2 = snapshot(out);
  assert.deepEqual(changed(s1, s2), [shardOfExpert('2')]);

  const swap = noise.replace('  - source_model: ' + join(FIXTURES, 'tiny-llama', 'tiny-b'), '  - source_model: ' + join(FIXTURES, 'tiny-llama', 'tiny-c'));
  assert.notEqual(swap, noise);
  const r3 = await merge(d, swap, out);
  const s3 = snapshot(out);
  // The swapped expert's weights change, and with cheap_embed its router rows do not (they come from prompts).
  assert.deepEqual(changed(s2, s3), [shardOfExpert('1')]);
  assert.equal(r3.written, 1);
  assert.deepEqual(Object.keys(s3.split), Object.keys(s0.split), 'same file names throughout');
});

test('a shard damaged in place and re-dated (touch -r: same size, same mtime) is written again, never kept or hard-linked as unchanged', async () => {
  const d = tempDir();
  const out = join(d, 'out');
  await merge(d, recipeText, out);
  const s0 = snapshot(out);
  const good = new Map(Object.keys(s0.split).map((f) => [f, readFileSync(join(out, f))]));
  const expertShard = s0.holder.get('model.layers.0.block_sparse_moe.experts.1.w1.weight')!;
  const damage = (f: string) => {
    const ref = join(d, 'timestamps');
    spawnSync('touch', ['-r', join(out, f), ref]);
    const bytes = readFileSync(join(out, f));
    bytes[bytes.length - 2] ^= 0x01;
    writeFileSync(join(out, f), bytes);
    spawnSync('touch', ['-r', ref, join(out, f)]);
    assert.equal(statSync(join(out, f)).mtimeMs, statSync(ref).mtimeMs);
    assert.equal(statSync(join(out, f)).size, good.get(f)!.length);
  };
  const same = () => {
    for (const [f, bytes] of good) assert.ok(readFileSync(join(out, f)).equals(bytes), `${f} holds the merge's bytes`);
  };

  // The same recipe: not "output unchanged", the damaged shard alone is written.
  damage(expertShard);
  const r1 = await merge(d, recipeText, out);
  assert.deepEqual({ skipped: r1.skipped, written: r1.written, kept: r1.kept }, { skipped: false, written: 1, kept: 4 });
  same();
  assert.equal((await merge(d, recipeText, out)).skipped, true, 'and then the folder is as written');

  // A prompt edit rewrites the router shard; the damaged expert shard is written too, not hard-linked.
  damage(expertShard);
  const promptEdit = recipeText.replace('Once upon a time there was a model', 'Once upon a time there was a merge');
  const r2 = await merge(d, promptEdit, out);
  assert.deepEqual({ written: r2.written, kept: r2.kept }, { written: 2, kept: 3 });
  assert.ok(readFileSync(join(out, expertShard)).equals(good.get(expertShard)!));
});

test('--shard-order reference reproduces the reference\'s file split', async () => {
  const d = tempDir();
  const out = join(d, 'out');
  const r = await mergekitMoe(['mixtral-cheap_embed.yml', out, '--shard-order', 'reference'], PARITY);
  assert.equal(r.exitCode, 0, r.stderr);
  const m = manifest('mixtral-cheap_embed.classic.manifest.json');
  assert.deepEqual(Object.keys(weightSplit(out)), m.files.filter(isWeightFile));
  assert.ok(!existsSync(join(out, 'model.safetensors.index.json')));
  await assertMatchesManifest(out, m, 1e-6);

  // Several shards: the reference's rule over its v0.1.4 write order (embed; per layer attention, then w3, w1, w2
  // of every expert; norm, lm_head; routers), flushing before a tensor that would pass 200 kB.
  const out2 = join(d, 'out2');
  const r2 = await merge(d, recipeText, out2, { maxShardBytes: 200_000, shardOrder: 'reference' });
  assert.equal(r2.shards, 5);
  const split = weightSplit(out2);
  const L0 = 'model.layers.0.', L1 = 'model.layers.1.', X = 'block_sparse_moe.experts.';
  const want: [number, string, string][] = [
    [7, 'model.embed_tokens.weight', `${L0}post_attention_layernorm.weight`],
    [6, `${L0}${X}0.w3.weight`, `${L0}${X}2.w1.weight`],
    [10, `${L0}${X}0.w2.weight`, `${L1}${X}0.w3.weight`],
    [6, `${L1}${X}1.w3.weight`, `${L1}${X}0.w2.weight`],
    [6, `${L1}${X}1.w2.weight`, `${L1}block_sparse_moe.gate.weight`],
  ];
  const index = JSON.parse(readFileSync(join(out2, 'model.safetensors.index.json'), 'utf8')).weight_map as Record<string, string>;
  const inOrder = Object.keys(index); // written in write order
  let at = 0;
  want.forEach(([n, firstName, lastName], i) => {
    const file = `model-0000${i + 1}-of-00005.safetensors`;
    assert.equal(split[file]!.length, n, file);
    assert.equal(inOrder[at], firstName, `${file} starts with ${firstName}`);
    assert.equal(inOrder[at + n - 1], lastName, `${file} ends with ${lastName}`);
    for (const name of inOrder.slice(at, at + n)) assert.equal(index[name], file, name);
    at += n;
  });
});

test('--shard-order with an unknown value is refused', async () => {
  const d = tempDir();
  const r = await mergekitMoe(['mixtral-cheap_embed.yml', join(d, 'out'), '--shard-order', 'random'], PARITY);
  assert.equal(r.exitCode, 1);
  assert.match(r.stderr, /--shard-order must be grouped or reference, got "random"/);
});
