import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { readRecipe } from '../../libs/recipe/parse';
import { runFetch } from '../../libs/stages/fetch';
import { runEmbedPrompts } from '../../libs/stages/embed-prompts';
import { gatesForAssembly, runBuildGates } from '../../libs/stages/build-gates';
import { runAssemble } from '../../libs/stages/assemble';
import { runWrite, writeOutput, type LateInputs } from '../../libs/stages/write';
import { normalsAheadStats, setNormalsAheadMin, setNormalsAheadThreads } from '../../libs/noise/normals-ahead';
import { newGates } from '../../libs/gates';
import { advanceTorchState } from '../../libs/noise/noise';
import { shardsOf } from '../../libs/stages/write-manifest';
import type { MergePlan } from '../../libs/plan/types';
import { FIXTURES, tempDir, TINY } from '../helpers/tmp';
import { gatesOf, mixtralPlan } from '../helpers/mixtral-plan';
import { readGguf, readTensorData } from '../../libs/gguf';

const recipeText = readFileSync(join(FIXTURES, 'parity', 'mixtral-hidden.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama'));

test('mergekit-moe writes the base and expert shards while the forward pass runs, the router shard after it, and the same bytes as the stages one after another', async () => {
  const d = tempDir();
  const file = join(d, 'moe.yml');
  writeFileSync(file, recipeText);
  const lines: string[] = [];
  await mergeRecipe({ recipeFile: file, outPath: join(d, 'out'), modelBaseDir: d, cacheDir: join(d, 'cache'), maxShardBytes: 100_000, log: (l) => lines.push(l) });
  const ahead = lines.filter((l) => l.includes('while the routers are computed'));
  const shards = readdirSync(join(d, 'out')).filter((f) => f.endsWith('.safetensors')).sort();
  assert.equal(ahead.length, shards.length - 1, `every shard but the routers' written ahead:\n${lines.join('\n')}`);
  assert.ok(!ahead.some((l) => l.includes(shards[0]!)), 'the router shard (first in the grouped order) waits for the routers');
  assert.ok(lines.some((l) => l.startsWith(`writing ${shards[0]}`)), 'the router shard is written after');
  // Each shard once: those written ahead (from the models' headers, while fetch hashed them) are kept under their content keys.
  for (const f of shards) assert.equal(lines.filter((l) => l.startsWith(`writing ${f} `)).length, 1, `${f} written once:\n${lines.join('\n')}`);

  // The same recipe through the stage functions, one after another (as the Nx targets run them).
  const work = join(d, 'work');
  const parsed = await readRecipe(file);
  const { merge } = await runFetch(parsed, join(work, 'fetch'), { cacheDir: join(d, 'cache2'), modelBaseDir: d, seed: 0 });
  await runEmbedPrompts(merge, join(work, 'embed'), { cacheDir: join(d, 'cache2') });
  await runBuildGates(merge, join(work, 'embed'), join(work, 'gates'));
  const { gates, warnings } = await gatesForAssembly(merge, join(work, 'gates'));
  const plan = await runAssemble(merge, join(work, 'plan'), { maxShardBytes: 100_000, extraWarnings: warnings, gates });
  await runWrite(plan, { outPath: join(d, 'seq'), gates, recipeText: parsed.text, tokenizerDir: merge.ctx.base.dir, copyTokenizer: true, overwrite: false, recipeFile: file });
  const names = readdirSync(join(d, 'seq')).sort();
  assert.deepEqual(readdirSync(join(d, 'out')).sort(), names);
  for (const f of names) {
    if (f === '.moe-forge.json') {
      // The stamp's plan hash covers how the stages were called (it differs between these two paths without
      // writing ahead too); its files and shard hashes must agree.
      const stamp = (dir: string) => {
        const { hash: _hash, ...rest } = JSON.parse(readFileSync(join(dir, f), 'utf8')) as Record<string, unknown>;
        return rest;
      };
      assert.deepEqual(stamp(join(d, 'out')), stamp(join(d, 'seq')));
    } else assert.ok(readFileSync(join(d, 'out', f)).equals(readFileSync(join(d, 'seq', f))), `${f} differs`);
  }
});

test('an early plan made before the models were hashed writes its shards ahead, takes their content keys once the ids come, and gives the bytes and stamp of a plan that had them; ids that fail stop the write with no output; ids that say a model changed since (null) have every shard written again from the final plan', async () => {
  const d = tempDir();
  const file = join(d, 'moe.yml');
  writeFileSync(file, recipeText);
  const parsed = await readRecipe(file);
  const { merge } = await runFetch(parsed, join(d, 'work', 'fetch'), { cacheDir: join(d, 'cache'), modelBaseDir: d, seed: 0 });
  await runEmbedPrompts(merge, join(d, 'work', 'embed'), { cacheDir: join(d, 'cache') });
  await runBuildGates(merge, join(d, 'work', 'embed'), join(d, 'work', 'gates'));
  const { gates, warnings } = await gatesForAssembly(merge, join(d, 'work', 'gates'));
  const plan = await runAssemble(merge, join(d, 'work', 'plan'), { maxShardBytes: 100_000, extraWarnings: warnings, gates });
  const ids = new Map(plan.models.map((m) => [m.key, m.contentId!]));
  assert.ok([...ids.values()].every((id) => /^[0-9a-f]{64}$/.test(id)));
  const early: MergePlan = { ...plan, models: plan.models.map(({ contentId: _id, ...m }) => m) };
  const opts = { recipeText: parsed.text, tokenizerDir: merge.ctx.base.dir, copyTokenizer: true, overwrite: false, recipeFile: file };
  await runWrite(plan, { ...opts, outPath: join(d, 'seq'), gates });

  const lines: string[] = [];
  let give!: (m: ReadonlyMap<string, string>) => void;
  const later = new Promise<ReadonlyMap<string, string>>((r) => (give = r));
  let aheadBeforeIds = 0;
  const log = (l: string) => {
    lines.push(l);
    // The ids come once every shard without routers has been written ahead.
    if (l.includes('while the routers are computed') && ++aheadBeforeIds === shardsOf(plan).length - 1) setTimeout(() => give(ids), 20);
  };
  await writeOutput(early, later.then(() => ({ plan, gates })), { ...opts, outPath: join(d, 'out'), log }, true, later);
  assert.equal(aheadBeforeIds, shardsOf(plan).length - 1, lines.join('\n'));
  for (const f of readdirSync(join(d, 'out'))) {
    if (f !== '.moe-forge.json') assert.ok(readFileSync(join(d, 'out', f)).equals(readFileSync(join(d, 'seq', f))), `${f} differs`);
  }
  const stamp = (dir: string) => JSON.parse(readFileSync(join(dir, '.moe-forge.json'), 'utf8')) as { shards: Record<string, string> };
  assert.deepEqual(stamp(join(d, 'out')).shards, stamp(join(d, 'seq')).shards, 'the shards\' keys are their content keys');
  for (const f of Object.keys(stamp(join(d, 'out')).shards)) assert.equal(lines.filter((l) => l.startsWith(`writing ${f} `)).length, 1, `${f} written once`);

  // A model saved over since its header was read (null ids): every shard written ahead is written again.
  lines.length = 0;
  aheadBeforeIds = -Infinity;
  await writeOutput(early, Promise.resolve({ plan, gates }), { ...opts, outPath: join(d, 'out3'), log }, true, Promise.resolve(null));
  for (const f of Object.keys(stamp(join(d, 'seq')).shards)) {
    const times = lines.filter((l) => l.startsWith(`writing ${f} `)).length;
    assert.equal(times, lines.some((l) => l.startsWith(`writing ${f} `) && l.includes('while the routers are computed')) ? 2 : 1, `${f}:\n${lines.join('\n')}`);
    assert.ok(readFileSync(join(d, 'out3', f)).equals(readFileSync(join(d, 'seq', f))), `${f} differs`);
  }
  assert.deepEqual(stamp(join(d, 'out3')).shards, stamp(join(d, 'seq')).shards);

  // The models could not be hashed: that error, and nothing left behind.
  const failing = Promise.reject(new Error('model a could not be read'));
  await assert.rejects(writeOutput(early, failing, { ...opts, outPath: join(d, 'out2') }, true, failing), /model a could not be read/);
  assert.ok(!readdirSync(d).some((f) => f.startsWith('out2')), 'neither the output nor its temporary sibling');
});

test('a forward pass that fails while shards are written ahead stops the write: its error, no output, no temporary folder', async () => {
  const d = tempDir();
  const n = 16 << 20; // elements: 64 MB shards of zeros, long enough to still be writing when the failure comes
  const plan = { version: 1, architecture: 'Mixtral', layout: 'classic', outDtype: null, config: {}, models: [], maxShardBytes: 4 * n, warnings: [], shardOrder: 'reference',
    tensors: Array.from({ length: 6 }, (_, i) => ({ name: `t${i}`, dtype: 'F32', shape: [n], parts: [{ kind: 'zeros', elements: n }] })) } as unknown as MergePlan;
  const lines: string[] = [];
  let fail!: (e: Error) => void;
  const late = new Promise<never>((_, reject) => (fail = reject));
  const log = (l: string) => {
    lines.push(l);
    if (lines.length === 1) setImmediate(() => fail(new Error('the forward pass failed')));
  };
  await assert.rejects(writeOutput(plan, late, { outPath: join(d, 'out'), recipeText: '', tokenizerDir: '', copyTokenizer: false, overwrite: false, writeRecipe: false, log }), /the forward pass failed/);
  assert.ok(lines.length < 6, `stopped early: ${lines.join('; ')}`);
  assert.deepEqual(readdirSync(d), [], 'neither the output nor its temporary sibling');
  // And with the routers there, the same plan writes: the plain path still works.
  await runWrite(plan, { outPath: join(d, 'out'), gates: newGates(1, 1, 1), recipeText: '', tokenizerDir: '', copyTokenizer: false, overwrite: false, writeRecipe: false });
  assert.equal(readdirSync(join(d, 'out')).filter((f) => f.endsWith('.safetensors')).length, 6);
});

test('with --gguf, a forward pass that fails while shards and the GGUF are written ahead leaves nothing; with the routers the GGUF is written in the shards\' pass', async () => {
  const d = tempDir();
  const src = join(d, 'src');
  mkdirSync(src);
  const plan = mixtralPlan(src);
  const out = join(d, 'out');
  const opts = { outPath: out, recipeText: '', tokenizerDir: TINY('a'), copyTokenizer: true, overwrite: false, writeRecipe: false, gguf: 'bf16' as const };
  const lines: string[] = [];
  let fail!: (e: Error) => void;
  const late = new Promise<never>((_, reject) => (fail = reject));
  const log = (l: string) => {
    lines.push(l);
    if (/while the routers are computed/.test(l)) setImmediate(() => fail(new Error('the forward pass failed')));
  };
  await assert.rejects(writeOutput(plan, late, { ...opts, log }), /the forward pass failed/);
  assert.ok(lines.some((l) => /writing model-bf16\.gguf .* in the same pass as the shards/.test(l)), lines.join('\n'));
  assert.deepEqual(readdirSync(d), ['src'], 'neither the output nor its temporary sibling');
  const ok: string[] = [];
  await writeOutput(plan, Promise.resolve({ plan, gates: gatesOf(1) }), { ...opts, log: (l) => ok.push(l) });
  assert.ok(readdirSync(out).includes('model-bf16.gguf'));
  assert.ok(!ok.some((l) => /read back/.test(l)), ok.join('\n'));
});

test('shards written ahead go two at a time, a noised one beside one that is copied, and come out as written one at a time', async () => {
  const d = tempDir();
  const src = join(d, 'src');
  mkdirSync(src);
  const plan = mixtralPlan(src);
  // The second expert noised (one shard per tensor: maxShardBytes 1).
  for (const t of plan.tensors) if (t.group === 'expert/1') for (const p of t.parts) if (p.kind === 'source') p.noise = { scale: 0.01, seed: 3, stream: `noise/${t.name}` };
  const out = join(d, 'out');
  const opts = { outPath: out, recipeText: '', tokenizerDir: TINY('a'), copyTokenizer: true, overwrite: false, writeRecipe: false };
  const started: string[] = [];
  const at: { second: Map<string, number> | null } = { second: null };
  const log = (l: string) => {
    const m = /^writing (\S+) .*while the routers are computed/.exec(l);
    if (!m) return;
    started.push(m[1]!);
    if (started.length === 2) {
      // The shards in the write's temporary folder (a sibling of out) as they are now.
      const sizes = (at.second = new Map<string, number>());
      for (const e of readdirSync(d).filter((x) => x !== 'src')) {
        for (const f of readdirSync(join(d, e)).filter((x) => x.endsWith('.safetensors'))) sizes.set(f, statSync(join(d, e, f)).size);
      }
    }
  };
  await writeOutput(plan, Promise.resolve({ plan, gates: gatesOf(1) }), { ...opts, log });
  const noised = new Set(plan.tensors.filter((t) => t.group === 'expert/1').map((t) => t.name));
  const shardOf = (dir: string) => JSON.parse(readFileSync(join(dir, "model.safetensors.index.json"), "utf8")).weight_map as Record<string, string>;
  const map = shardOf(out);
  const isNoised = (file: string) => Object.entries(map).some(([t, f]) => f === file && noised.has(t));
  assert.deepEqual(started.slice(0, 2).map(isNoised), [true, false], `a noised shard first, a copied one beside it: ${started.join(', ')}`);
  assert.ok(at.second, 'a second shard started');
  const first = at.second.get(started[0]!) ?? 0;
  assert.ok(first < statSync(join(out, started[0]!)).size, 'the second shard started before the first was written');
  // The same plan written one shard at a time (no writing ahead): the same bytes.
  await runWrite(plan, { ...opts, outPath: join(d, 'seq'), gates: gatesOf(1) });
  for (const f of readdirSync(out).filter((x) => x.endsWith('.safetensors'))) assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(d, 'seq', f))), `${f} differs`);
});

test('under --rng torch, noised shards written two at a time draw what one at a time draws', async () => {
  const d = tempDir();
  const src = join(d, 'src');
  mkdirSync(src);
  const plan = mixtralPlan(src);
  // Every tensor noised from one torch generator, in plan order (one tensor a shard): two noised shards side by side.
  let state = { offset: 0, cachedNormal: null as number | null };
  for (const t of plan.tensors) {
    for (const p of t.parts) {
      if (p.kind !== 'source') continue;
      p.noise = { scale: 0.01, seed: 42, stream: `noise/${t.name}`, torch: { ...state } };
      state = advanceTorchState(42, state, 'randn', p.shape.reduce((a, b) => a * b, 1), 'BF16');
    }
  }
  const opts = { recipeText: '', tokenizerDir: TINY('a'), copyTokenizer: true, overwrite: false, writeRecipe: false };
  const started: string[] = [];
  const log = (l: string) => void (/^writing \S+ .*while the routers are computed/.test(l) && started.push(l));
  await writeOutput(plan, Promise.resolve({ plan, gates: gatesOf(1) }), { ...opts, outPath: join(d, 'out'), log });
  assert.ok(started.length >= 2, started.join('\n'));
  await runWrite(plan, { ...opts, outPath: join(d, 'seq'), gates: gatesOf(1) });
  for (const f of readdirSync(join(d, 'out')).filter((x) => x.endsWith('.safetensors'))) assert.ok(readFileSync(join(d, 'out', f)).equals(readFileSync(join(d, 'seq', f))), `${f} differs`);
});

test('the default noise has one generator thread while the routers are computed (the forward pass has the cores), all of them after', async () => {
  const d = tempDir();
  const src = join(d, 'src');
  mkdirSync(src);
  const plan = mixtralPlan(src);
  for (const t of plan.tensors) for (const p of t.parts) if (p.kind === 'source') p.noise = { scale: 0.01, seed: 5, stream: `noise/${t.name}` };
  const min = setNormalsAheadMin(1); // the tiny tensors through the generator threads too
  const threads = await setNormalsAheadThreads(2);
  try {
    const opts = { recipeText: '', tokenizerDir: TINY('a'), copyTokenizer: true, overwrite: false, writeRecipe: false };
    const before = [...normalsAheadStats.byThreads];
    // The routers arrive once the last shard written ahead has started: the ones before it ran beside the forward pass.
    let resolve!: (v: LateInputs) => void;
    const late = new Promise<LateInputs>((r) => (resolve = r));
    const ahead = shardsOf(plan).filter((s) => !s.tensors.some((t) => t.name.endsWith('gate.weight'))).length;
    let started = 0;
    const log = (l: string) => {
      if (/while the routers are computed/.test(l) && ++started === ahead) resolve({ plan, gates: gatesOf(1) });
    };
    await writeOutput(plan, late, { ...opts, outPath: join(d, 'out'), log });
    assert.ok(ahead >= 3 && started === ahead, `${started} of ${ahead}`);
    assert.ok(normalsAheadStats.byThreads[1]! > before[1]!, 'streams with one thread while the forward pass ran');
    const mid = [...normalsAheadStats.byThreads];
    await runWrite(plan, { ...opts, outPath: join(d, 'seq'), gates: gatesOf(1) });
    assert.equal(normalsAheadStats.byThreads[1], mid[1], 'no forward pass: never one thread');
    assert.equal(normalsAheadStats.byThreads[2]! - mid[2]!, plan.tensors.filter((t) => t.parts.some((p) => p.kind === 'source')).length);
    for (const f of readdirSync(join(d, 'out')).filter((x) => x.endsWith('.safetensors'))) assert.ok(readFileSync(join(d, 'out', f)).equals(readFileSync(join(d, 'seq', f))), `${f} differs`);
  } finally {
    setNormalsAheadMin(min);
    await setNormalsAheadThreads(threads);
  }
});

test('a split GGUF: its files written in the shards\' pass, ahead of the routers; after one expert changes, the files without its tensors are kept and the others hold a fresh build\'s bytes', async () => {
  const d = tempDir();
  const src = join(d, 'src');
  mkdirSync(src);
  const plan = mixtralPlan(src);
  const out = join(d, 'out');
  // One tensor a file (1 byte each): the routers' file, then each other tensor alone.
  const opts = { outPath: out, recipeText: '', tokenizerDir: TINY('a'), copyTokenizer: true, overwrite: false, writeRecipe: false, gguf: 'bf16' as const, ggufSplitBytes: 1 };
  const lines: string[] = [];
  await writeOutput(plan, Promise.resolve({ plan, gates: gatesOf(1) }), { ...opts, log: (l) => lines.push(l) });
  const files = readdirSync(out).filter((f) => f.endsWith('.gguf')).sort();
  assert.ok(files.length > 3, files.join(', '));
  assert.ok(lines.some((l) => l.includes('while the routers are computed')), lines.join('\n'));
  for (const f of files) assert.equal(lines.filter((l) => l.startsWith(`writing ${f} `) && l.includes('in the same pass as the shards')).length, 1, `${f}:\n${lines.join('\n')}`);
  assert.ok(!lines.some((l) => /read back/.test(l)), lines.join('\n'));

  // The second expert noised: its shard is written ahead again, and the files of tensors it has no part in kept.
  const noised: MergePlan = structuredClone(plan);
  for (const t of noised.tensors) if (t.group === 'expert/1') for (const p of t.parts) if (p.kind === 'source') p.noise = { scale: 0.01, seed: 3, stream: `noise/${t.name}` };
  const inodes = () => new Map(files.map((f) => [f, statSync(join(out, f)).ino]));
  const before = inodes();
  const again: string[] = [];
  await writeOutput(noised, Promise.resolve({ plan: noised, gates: gatesOf(1) }), { ...opts, log: (l) => again.push(l) });
  assert.deepEqual(readdirSync(out).filter((f) => f.endsWith('.gguf')).sort(), files);
  const after = inodes();
  const expertFiles = new Set<string>();
  for (const f of files) {
    const g = await readGguf(join(out, f));
    if (g.tensors.some((t) => t.name.includes('_exps'))) expertFiles.add(f);
  }
  assert.ok(expertFiles.size > 0 && expertFiles.size < files.length - 1);
  for (const f of files.slice(1)) assert.equal(after.get(f) === before.get(f), !expertFiles.has(f), `${f}: kept only without the noised expert's tensors\n${again.join('\n')}`);
  // Every tensor as a fresh unsplit build of the noised plan has it.
  const fresh = join(d, 'fresh');
  await writeOutput(noised, Promise.resolve({ plan: noised, gates: gatesOf(1) }), { ...opts, outPath: fresh, ggufSplitBytes: undefined });
  const want = await readGguf(join(fresh, 'model-bf16.gguf'));
  const got = new Map<string, Buffer>();
  for (const f of files) {
    const g = await readGguf(join(out, f));
    for (const t of g.tensors) got.set(t.name, await readTensorData(join(out, f), t));
  }
  assert.equal(got.size, want.tensors.length);
  for (const t of want.tensors) assert.ok((await readTensorData(join(fresh, 'model-bf16.gguf'), t)).equals(got.get(t.name)!), t.name);
});
