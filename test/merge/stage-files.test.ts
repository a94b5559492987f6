import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readRecipe } from '../../libs/recipe/parse';
import { runFetch } from '../../libs/stages/fetch';
import { promptStatesStats, runEmbedPrompts } from '../../libs/stages/embed-prompts';
import { gatesForAssembly, readGates, runBuildGates } from '../../libs/stages/build-gates';
import { readPlan, runAssemble } from '../../libs/stages/assemble';
import { checkResolvedModels, readModelsFile } from '../../libs/stages/context';
import { hubCacheDir } from '../../libs/resolve/settings';
import { ForgeError } from '../../libs/errors';
import { GATES_INFO_SCHEMA, readStageJson, stageFileStats, writeStageFile } from '../../libs/stage-files';
import type { MergePlan, SourcePart } from '../../libs/plan/types';
import { FIXTURES, TINY, tempDir } from '../helpers/tmp';

// Stage files come back from Nx caches (a remote one may be written by someone else): each stage reads them
// through a checked reader. These tests alter the files as a cache entry could be altered.

const BIN = join(FIXTURES, 'tiny-llama-bin', 'tiny-a');
const RECIPE = `base_model: ${TINY('a')}
gate_mode: cheap_embed
experts:
  - source_model: ${TINY('a')}
    positive_prompts: ["How do I merge two models with mergekit?"]
  - source_model: ${TINY('b')}
    positive_prompts: ["Once upon a time there was a model"]
  - source_model: ${BIN}
    positive_prompts: ["Write a python function that adds numbers"]
`;

/** Every stage up to assemble-experts, as the Nx executors run them, in a throwaway workspace. */
async function stages() {
  const ws = tempDir();
  const recipeFile = join(ws, 'moe.yml');
  writeFileSync(recipeFile, RECIPE);
  const parsed = await readRecipe(recipeFile);
  const roots = { workspace: ws, hubCache: hubCacheDir() };
  const cacheDir = join(ws, '.moe-cache');
  const { merge } = await runFetch(parsed, join(ws, 'fetch'), { cacheDir, modelBaseDir: ws, root: ws });
  await runEmbedPrompts(merge, join(ws, 'embed-prompts'), { cacheDir });
  await runBuildGates(merge, join(ws, 'embed-prompts'), join(ws, 'build-gates'));
  const { gates } = await gatesForAssembly(merge, join(ws, 'build-gates'));
  await runAssemble(merge, join(ws, 'assemble'), { maxShardBytes: 1e9, gates, roots });
  const models = (await readModelsFile(join(ws, 'fetch', 'models.json'), roots)).models;
  const planFile = join(ws, 'assemble', 'plan.json');
  const alterPlan = (edit: (p: MergePlan) => void) => {
    const plan = JSON.parse(readFileSync(planFile, 'utf8')) as MergePlan;
    edit(plan);
    writeFileSync(planFile, JSON.stringify(plan));
  };
  const alterJson = (file: string, edit: (v: Record<string, unknown>) => void) => {
    const v = JSON.parse(readFileSync(file, 'utf8'));
    edit(v);
    writeFileSync(file, JSON.stringify(v));
  };
  return { ws, parsed, merge, roots, models, planFile, alterPlan, alterJson };
}

/** The first source part of the plan, with its tensor's name. */
const firstSource = (p: MergePlan): { name: string; part: SourcePart } => {
  const t = p.tensors.find((x) => x.parts[0]!.kind === 'source')!;
  return { name: t.name, part: t.parts[0] as SourcePart };
};

/** Refused as a ForgeError in one line naming the file (and the tensor, when given). */
async function refused(p: Promise<unknown>, file: string, re: RegExp, tensor?: string) {
  await assert.rejects(p, (e: Error) => {
    assert.ok(e instanceof ForgeError, `a ForgeError, not ${e}`);
    assert.ok(!e.message.includes('\n'), 'one line');
    assert.ok(e.message.startsWith(file), `names ${file}: ${e.message}`);
    if (tensor) assert.ok(e.message.includes(`tensor ${tensor}`), `names the tensor: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

test('plan.json: a source file changed to a file outside the models (absolute or climbing out with ..) is refused with the tensor\'s name', async () => {
  const s = await stages();
  const { name } = firstSource(JSON.parse(readFileSync(s.planFile, 'utf8')));
  for (const file of ['/etc/passwd', '../../../../../../../../etc/passwd', '../tiny-b/model.safetensors']) {
    s.alterPlan((p) => (firstSource(p).part.file = file));
    await refused(readPlan(join(s.ws, 'assemble'), s.models), s.planFile, new RegExp(`reads ${file.replace(/[./]/g, '\\$&')}, which is not a file of the resolved models; plan\\.json is refused \\(a cache entry may have been altered`), name);
  }
});

test('plan.json: offsets, lengths, dtypes and shapes other than the header\'s, and tensors the model lacks, are refused', async () => {
  const s = await stages();
  const clean = readFileSync(s.planFile, 'utf8');
  const { name, part } = firstSource(JSON.parse(clean));
  const edits: [string, (p: SourcePart) => void, RegExp][] = [
    ['offset past the header', (p) => (p.offset += 4096), /its header gives/],
    ['offset into another tensor', (p) => (p.offset -= 8), /its header gives/],
    ['longer', (p) => (p.byteLength *= 2), /its header gives/],
    ['another dtype', (p) => (p.dtype = p.dtype === 'F32' ? 'BF16' : 'F32'), /its header gives/],
    ['another shape', (p) => (p.shape = [1, ...p.shape]), /its header gives/],
    ['a tensor the model lacks', (p) => (p.tensor = 'model.secret.weight'), /reads model\.secret\.weight, which model .* does not hold/],
  ];
  for (const [what, edit, re] of edits) {
    writeFileSync(s.planFile, clean);
    s.alterPlan((p) => edit(firstSource(p).part));
    await refused(readPlan(join(s.ws, 'assemble'), s.models), s.planFile, re, name);
    assert.ok(part, what);
  }
  // A PyTorch .bin source: its offsets come from the checked zip and pickle parse, and are held to them too.
  writeFileSync(s.planFile, clean);
  const bin = (p: MergePlan) => p.tensors.flatMap((t) => t.parts.map((part) => ({ name: t.name, part }))).find((x) => x.part.kind === 'source' && x.part.file === 'pytorch_model.bin')!;
  const binName = bin(JSON.parse(clean)).name;
  s.alterPlan((p) => ((bin(p).part as SourcePart).offset += 2));
  await refused(readPlan(join(s.ws, 'assemble'), s.models), s.planFile, /of .*tiny-llama-bin\/tiny-a as .*, but its header gives/, binName);
  // The clean plan reads each tensor where the header puts it.
  writeFileSync(s.planFile, clean);
  const plan = await readPlan(join(s.ws, 'assemble'), s.models);
  assert.equal(firstSource(plan).part.file, join(TINY('a'), 'model.safetensors'));
});

test('plan.json: another version, a broken shape, or a model models.json did not resolve is refused; model folders come from models.json only', async () => {
  const s = await stages();
  const clean = readFileSync(s.planFile, 'utf8');
  s.alterPlan((p) => ((p as { version: number }).version = 2));
  await refused(readPlan(join(s.ws, 'assemble'), s.models), s.planFile, /version 2, expected 1/);
  writeFileSync(s.planFile, clean);
  s.alterPlan((p) => ((p.tensors[0] as { parts: unknown }).parts = 'all of /etc'));
  await refused(readPlan(join(s.ws, 'assemble'), s.models), s.planFile, /tensors\[0\]\.parts: /);
  writeFileSync(s.planFile, clean);
  s.alterPlan((p) => {
    p.models.push({ key: 'local:/etc', ref: '/etc', dir: '/etc' });
    firstSource(p).part.model = 'local:/etc';
  });
  await refused(readPlan(join(s.ws, 'assemble'), s.models), s.planFile, /model \/etc \(local:\/etc\) is not one of the models models\.json resolved/);
  // A folder written into the plan is never used: the model's folder is the one models.json resolved.
  writeFileSync(s.planFile, clean);
  s.alterPlan((p) => (p.models[0]!.dir = '/etc'));
  const plan = await readPlan(join(s.ws, 'assemble'), s.models);
  assert.equal(plan.models[0]!.dir, TINY('a'));
  // A zeros part larger than its tensor would allocate and write what the plan says.
  writeFileSync(s.planFile, clean);
  s.alterPlan((p) => p.tensors.push({ name: 'zeros', dtype: 'F32', shape: [4], parts: [{ kind: 'zeros', elements: 2 ** 40 }], group: 'base' }));
  await refused(readPlan(join(s.ws, 'assemble'), s.models), s.planFile, /zeros planned for a tensor of 4 elements/, 'zeros');
});

test('models.json: another version, or a folder other than the one the recipe resolves, is refused', async () => {
  const s = await stages();
  const file = join(s.ws, 'fetch', 'models.json');
  const clean = readFileSync(file, 'utf8');
  checkResolvedModels(file, s.models, s.parsed, s.ws, s.roots);
  s.alterJson(file, (v) => ((v.models as { dir: string }[])[0]!.dir = TINY('c')));
  const moved = (await readModelsFile(file, s.roots)).models;
  assert.throws(() => checkResolvedModels(file, moved, s.parsed, s.ws, s.roots), (e: Error) => e instanceof ForgeError && e.message.startsWith(file) && /names the folder .*tiny-c, but the recipe resolves it to .*tiny-a/.test(e.message));
  writeFileSync(file, clean);
  s.alterJson(file, (v) => (v.models as unknown[]).push({ key: 'local:/etc', ref: '/etc', dir: '/etc', source: 'local', revision: null }));
  const extra = (await readModelsFile(file, s.roots)).models;
  assert.throws(() => checkResolvedModels(file, extra, s.parsed, s.ws, s.roots), /it lists the models .*local:\/etc, but the recipe's are/);
  writeFileSync(file, clean);
  s.alterJson(file, (v) => ((v.models as { ref: string }[])[1]!.ref = 'evil/model'));
  const renamed = (await readModelsFile(file, s.roots)).models;
  assert.throws(() => checkResolvedModels(file, renamed, s.parsed, s.ws, s.roots), /is named "evil\/model", but the recipe names it/);
  writeFileSync(file, clean);
  s.alterJson(file, (v) => (v.version = 3));
  await refused(readModelsFile(file, s.roots), file, /version 3, expected 2/);
});

test('prompt states, gates.json and gates.safetensors of other sizes, modes or prompts are refused by the stages that read them', async () => {
  const s = await stages();
  const statesFile = join(s.ws, 'embed-prompts', 'prompt-states.json');
  const clean = readFileSync(statesFile, 'utf8');
  s.alterJson(statesFile, (v) => (v.prompts as { text: string }[]).reverse().pop());
  await refused(runBuildGates(s.merge, join(s.ws, 'embed-prompts'), join(s.ws, 'gates2')), statesFile, /it lacks the prompt "How do I merge two models with mergekit\?"/);
  writeFileSync(statesFile, clean);
  s.alterJson(statesFile, (v) => (v.hidden = 8));
  await refused(runBuildGates(s.merge, join(s.ws, 'embed-prompts'), join(s.ws, 'gates2')), statesFile, /cheap_embed states of 1 layers x 8, but the merge needs cheap_embed states of 1 x 64/);
  writeFileSync(statesFile, clean);
  s.alterJson(statesFile, (v) => ((v.prompts as { count: number }[])[0]!.count = 1000));
  await refused(runBuildGates(s.merge, join(s.ws, 'embed-prompts'), join(s.ws, 'gates2')), statesFile, /prompts\[0\]\.count: count must be the number of token ids/);
  writeFileSync(statesFile, clean);
  const gatesInfo = join(s.ws, 'build-gates', 'gates.json');
  s.alterJson(gatesInfo, (v) => (v.experts = 4));
  await refused(gatesForAssembly(s.merge, join(s.ws, 'build-gates')), gatesInfo, /gates of 2 layers x 4 experts/);
  s.alterJson(gatesInfo, (v) => delete v.version);
  await refused(gatesForAssembly(s.merge, join(s.ws, 'build-gates')), gatesInfo, /version undefined, expected 1/);
  // gates.safetensors whose tensor is another size than the recipe's routers.
  const gatesFile = join(s.ws, 'build-gates', 'gates.safetensors');
  const g = await readGates(join(s.ws, 'build-gates'));
  const header = Buffer.from(JSON.stringify({ gates: { dtype: 'F32', shape: [1, g.experts, g.hidden], data_offsets: [0, g.experts * g.hidden * 4] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  writeFileSync(gatesFile, Buffer.concat([len, header, Buffer.alloc(g.experts * g.hidden * 4)]));
  await refused(readGates(join(s.ws, 'build-gates'), { layers: g.layers, experts: g.experts, hidden: g.hidden }), gatesFile, /gates is F32 \[1, 3, 64\], expected F32 \[2, 3, 64\]/, 'gates');
});

test('build-gates in the process that wrote the prompt states takes their rows from memory while the file is unchanged; rewritten, even with the same bytes, the file is read, and gates follow its values', async () => {
  const ws = tempDir();
  const recipeFile = join(ws, 'moe.yml');
  writeFileSync(recipeFile, `base_model: ${TINY('a')}\ngate_mode: hidden\nexperts:\n  - source_model: ${TINY('a')}\n    positive_prompts: ["How do I merge two models?"]\n  - source_model: ${TINY('b')}\n    positive_prompts: ["Once upon a time"]\n`);
  const cacheDir = join(ws, '.moe-cache');
  const { merge } = await runFetch(await readRecipe(recipeFile), join(ws, 'fetch'), { cacheDir, modelBaseDir: ws, root: ws });
  const states = join(ws, 'embed-prompts');
  await runEmbedPrompts(merge, states, { cacheDir });
  const gatesAt = async (name: string) => {
    const before = promptStatesStats.fromMemory;
    await runBuildGates(merge, states, join(ws, name));
    return { data: (await readGates(join(ws, name))).data, fromMemory: promptStatesStats.fromMemory - before };
  };
  const inMemory = await gatesAt('g1');
  assert.equal(inMemory.fromMemory, 2, 'both prompts\' rows from memory');
  const file = join(states, 'prompt-states.safetensors');
  const bytes = readFileSync(file);
  writeFileSync(file, bytes);
  const read = await gatesAt('g2');
  assert.equal(read.fromMemory, 0, 'the file rewritten: read');
  assert.deepEqual(read.data, inMemory.data, 'the same gates either way');
  // A value of the first prompt's last-token state changed in the file: the gates follow the file.
  const header = Number(bytes.readBigUInt64LE(0));
  const meta = JSON.parse(bytes.subarray(8, 8 + header).toString('utf8')) as Record<string, { data_offsets: [number, number] }>;
  const at = 8 + header + meta['p0.last']!.data_offsets[0] + 4 * 64; // layer 1's first value (hidden 64)
  bytes.writeFloatLE(bytes.readFloatLE(at) + 1, at);
  writeFileSync(file, bytes);
  const changed = await gatesAt('g3');
  assert.equal(changed.fromMemory, 0);
  assert.notDeepEqual(changed.data, inMemory.data);
});

test('a stage file read back byte for byte as this process wrote it is not checked again against its schema; other bytes are, and refused where wrong', async () => {
  const file = join(tempDir(), 'gates.json');
  const info = { version: 1, layers: 2, experts: 2, hidden: 8, gateMode: 'hidden', conditionNumbers: [1, 1], warnings: [] };
  await writeStageFile(file, JSON.stringify(info, null, 2) + '\n');
  let own = stageFileStats.own;
  assert.deepEqual(await readStageJson(file, GATES_INFO_SCHEMA, 1, 'build-gates'), info);
  assert.equal(stageFileStats.own, own + 1, 'the text this process wrote');
  // The same value in other bytes (another writer): checked.
  writeFileSync(file, JSON.stringify(info));
  own = stageFileStats.own;
  assert.deepEqual(await readStageJson(file, GATES_INFO_SCHEMA, 1, 'build-gates'), info);
  assert.equal(stageFileStats.own, own);
  writeFileSync(file, JSON.stringify({ ...info, layers: -1 }));
  await refused(readStageJson(file, GATES_INFO_SCHEMA, 1, 'build-gates'), file, /layers/);
});
