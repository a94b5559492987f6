/**
 * The write stage's output manifest as data (libs/stages/write-manifest.ts): every file, its producer, its
 * content key and what applying it does, computed without writing anything.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { outputManifest, aheadShards, type ManifestInputs, type OutputManifest } from '../../libs/stages/write-manifest';
import { gatesOf, mixtralPlan } from '../helpers/mixtral-plan';
import { tempDir, TINY } from '../helpers/tmp';

const d = tempDir();
const plan = mixtralPlan(d, { maxShardBytes: 0 });
const inputs = (over: Partial<ManifestInputs>): ManifestInputs => ({ plan, gates: gatesOf(1), recipeText: 'base_model: x\n', tokenizerDir: TINY('a'), copyTokenizer: true, writeRecipe: true, gguf: 'bf16', previous: null, suspect: [], ...over });
const actions = (m: OutputManifest) => Object.fromEntries(m.entries.map((e) => [e.files[0], `${e.producer}:${e.action}`]));

test('a router-only edit: the router shard and the GGUF are written, the base and expert shards kept', async () => {
  const first = await outputManifest(inputs({}));
  // One shard per group (routers first), the index, the companions, the GGUF; nothing kept in a new folder.
  assert.deepEqual(actions(first), {
    'model-00001-of-00004.safetensors': 'shard:write',
    'model-00002-of-00004.safetensors': 'shard:write',
    'model-00003-of-00004.safetensors': 'shard:write',
    'model-00004-of-00004.safetensors': 'shard:write',
    'model.safetensors.index.json': 'index:write',
    'config.json': 'config:write',
    'tokenizer.json': 'tokenizer:write',
    'mergekit_moe_config.yml': 'recipe:write',
    'README.md': 'model-card:write',
    'model-bf16.gguf': 'gguf:write',
  });
  assert.deepEqual(Object.keys(first.keys).sort(), [...first.shards.map((s) => s.file), 'model-bf16.gguf'].sort());
  assert.equal(first.gguf?.layout.tensors.find((t) => t.name === 'blk.0.ffn_up_exps.weight')?.segments.length, 2);

  // Same inputs over the folder that manifest wrote: every keyed file kept.
  const again = await outputManifest(inputs({ previous: { shards: first.keys } }));
  assert.deepEqual(again.entries.filter((e) => e.key).map((e) => e.action), ['keep', 'keep', 'keep', 'keep', 'keep']);

  // New router rows (a prompt edit): only the router shard changes, so the GGUF (keyed by every shard) too.
  const edited = await outputManifest(inputs({ gates: gatesOf(2), previous: { shards: first.keys } }));
  assert.deepEqual(edited.entries.filter((e) => e.key).map((e) => `${e.files[0]}:${e.action}`), [
    'model-00001-of-00004.safetensors:write',
    'model-00002-of-00004.safetensors:keep',
    'model-00003-of-00004.safetensors:keep',
    'model-00004-of-00004.safetensors:keep',
    'model-bf16.gguf:write',
  ]);
  assert.equal(first.shards[0]!.tensors[0]!.name, 'model.layers.0.block_sparse_moe.gate.weight');
  // The previous GGUF holds the kept shards' tensors at the same places: a copy of it needs only the router written.
  assert.equal(first.gguf?.parts[0]?.unchanged, undefined);
  assert.deepEqual([...edited.gguf!.parts[0]!.unchanged!].sort(), plan.tensors.filter((t) => t.group !== 'router').map((t) => t.name).sort());
  // Not when the previous GGUF was made from other inputs (another config here) or is found changed.
  assert.equal((await outputManifest(inputs({ gates: gatesOf(2), previous: { shards: first.keys }, plan: { ...plan, config: { ...plan.config, rms_norm_eps: 1e-6 } } }))).gguf?.parts[0]?.unchanged, undefined);
  assert.equal((await outputManifest(inputs({ gates: gatesOf(2), previous: { shards: first.keys }, suspect: ['model-bf16.gguf'] }))).gguf?.parts[0]?.unchanged, undefined);

  // A kept file found changed on disk is written again; a shard written ahead under its key is left as it is.
  const suspect = await outputManifest(inputs({ gates: gatesOf(2), previous: { shards: first.keys }, suspect: ['model-00003-of-00004.safetensors'] }));
  assert.equal(actions(suspect)['model-00003-of-00004.safetensors'], 'shard:write');
  const ahead = await outputManifest(inputs({ ahead: new Map([['model-00002-of-00004.safetensors', first.keys['model-00002-of-00004.safetensors']!]]) }));
  assert.equal(actions(ahead)['model-00002-of-00004.safetensors'], 'shard:ahead');
  // Nothing was written: the folder holds the test's source file alone.
  assert.deepEqual(readdirSync(d), ['source.bin']);
});

test('--gguf-only: no shards and no index in the manifest; the GGUF keyed as with them', async () => {
  const both = await outputManifest(inputs({}));
  const only = await outputManifest(inputs({ ggufOnly: true }));
  assert.deepEqual(only.entries.filter((e) => e.producer === 'shard' || e.producer === 'index'), []);
  assert.equal(only.keys['model-bf16.gguf'], both.keys['model-bf16.gguf']);
  assert.deepEqual(Object.keys(only.keys), ['model-bf16.gguf']);
});

test('written ahead: the shards without routers that the previous folder does not hold', () => {
  const all = aheadShards(plan, null, []);
  assert.deepEqual(all.map((a) => a.shard.file), ['model-00002-of-00004.safetensors', 'model-00003-of-00004.safetensors', 'model-00004-of-00004.safetensors']);
  const keys = Object.fromEntries(all.map((a) => [a.shard.file, a.key]));
  assert.deepEqual(aheadShards(plan, { shards: keys }, []), []);
  assert.deepEqual(aheadShards(plan, { shards: keys }, ['model-00004-of-00004.safetensors']).map((a) => a.shard.file), ['model-00004-of-00004.safetensors']);
  // A stamp of an older build (no shard keys) may be the same merge: nothing ahead.
  assert.deepEqual(aheadShards(plan, {}, []), []);
});

test('a split GGUF: the routers and metadata in the first file, the rest in files of the size asked; a prompt edit rewrites the first alone', async () => {
  const one = await outputManifest(inputs({}));
  const split = await outputManifest(inputs({ ggufSplitBytes: 1 }));
  const files = split.gguf!.parts.map((p) => p.part.file);
  // 1 byte a file: every tensor but the routers in a file of its own.
  const routers = one.gguf!.layout.tensors.filter((t) => t.name.includes('ffn_gate_inp')).map((t) => t.name);
  assert.equal(files.length, one.gguf!.layout.tensors.length - routers.length + 1);
  assert.deepEqual(files.slice(0, 2), [`model-bf16-00001-of-${String(files.length).padStart(5, '0')}.gguf`, `model-bf16-00002-of-${String(files.length).padStart(5, '0')}.gguf`]);
  assert.deepEqual(split.gguf!.parts[0]!.part.layout.tensors.map((t) => t.name), routers);
  assert.equal(actions(split)['model-bf16.gguf'], undefined);
  for (const f of files) assert.equal(actions(split)[f], 'gguf:write');
  // A size that holds all the rest: two files.
  const two = await outputManifest(inputs({ ggufSplitBytes: 5e9 }));
  assert.deepEqual(two.gguf!.parts.map((p) => p.part.file), ['model-bf16-00001-of-00002.gguf', 'model-bf16-00002-of-00002.gguf']);
  // The same inputs: all kept; new router rows: the first file written, the second kept (its shards unchanged).
  assert.deepEqual((await outputManifest(inputs({ ggufSplitBytes: 5e9, previous: { shards: two.keys } }))).entries.filter((e) => e.producer === 'gguf').map((e) => e.action), ['keep', 'keep']);
  const edited = await outputManifest(inputs({ ggufSplitBytes: 5e9, gates: gatesOf(2), previous: { shards: two.keys } }));
  assert.deepEqual(edited.entries.filter((e) => e.producer === 'gguf').map((e) => `${e.files[0]}:${e.action}`), ['model-bf16-00001-of-00002.gguf:write', 'model-bf16-00002-of-00002.gguf:keep']);
  // Another config (rms_norm_eps is in the first file's metadata): both written.
  const other = await outputManifest(inputs({ ggufSplitBytes: 5e9, previous: { shards: two.keys }, plan: { ...plan, config: { ...plan.config, rms_norm_eps: 1e-6 } } }));
  assert.deepEqual(other.entries.filter((e) => e.producer === 'gguf').map((e) => e.action), ['write', 'write']);
});

test('an unsplit GGUF over 50 GB is said with the layout\'s warnings (the Hub would refuse it); split, it is not', async () => {
  const big = structuredClone(plan);
  // Shapes only (nothing is read or written): the embeddings and the output head 30 GB each in bf16.
  for (const name of ['model.embed_tokens.weight', 'lm_head.weight']) big.tensors.find((t) => t.name === name)!.shape = [468_750_000, 32];
  const one = await outputManifest(inputs({ plan: big }));
  assert.ok(one.gguf!.layout.warnings.some((w) => /^model-bf16\.gguf is \d+\.\d GB: the Hugging Face Hub takes no file over 50 GB; --gguf-split-max-size 50g/.test(w)), one.gguf!.layout.warnings.join('\n'));
  const split = await outputManifest(inputs({ plan: big, ggufSplitBytes: 50e9 }));
  assert.ok(split.gguf!.parts.length > 2);
  assert.ok(!split.gguf!.layout.warnings.some((w) => /Hub/.test(w)), split.gguf!.layout.warnings.join('\n'));
  // One tensor over 50 GB: its file is said.
  big.tensors.find((t) => t.name === 'lm_head.weight')!.shape = [1e9, 32];
  const huge = await outputManifest(inputs({ plan: big, ggufSplitBytes: 50e9 }));
  assert.deepEqual(huge.gguf!.layout.warnings.filter((w) => /Hub/.test(w)), ['model-bf16-00002-of-00003.gguf is 64.0 GB, one tensor larger than the split size: the Hugging Face Hub takes no file over 50 GB']);
});
