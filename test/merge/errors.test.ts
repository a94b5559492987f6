import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsWeights, readTensorBytes, writeShard } from '../../libs/safetensors';
import { mergekitMoe } from '../helpers/cli';
import { copyModel, tempDir, TINY } from '../helpers/tmp';
import { mergeRefused } from '../helpers/refused';

const dir = tempDir();
const models = join(dir, 'models');
mkdirSync(models);
for (const n of ['a', 'b', 'c'] as const) copyModel(TINY(n), join(models, n));

const recipe = (over: { base?: string; b?: string; extra?: string; gate?: string; prompt2?: string } = {}) => `base_model: ${over.base ?? join(models, 'a')}
gate_mode: ${over.gate ?? 'cheap_embed'}
experts:
  - source_model: ${join(models, 'a')}
    positive_prompts: ["math"]
  - source_model: ${over.b ?? join(models, 'b')}
    positive_prompts: ["${over.prompt2 ?? 'code'}"]
${over.extra ?? ''}`;

const failsWith = (text: string, re: RegExp) => mergeRefused(dir, text, re);

test('recipe errors stop the merge before any output', async () => {
  await failsWith('base_model: [x\n', /r\d+\.yml:\d+:\d+: invalid YAML/);
  await failsWith(recipe({ extra: 'expert_per_token: 2\n' }), /field expert_per_token: unknown key "expert_per_token" \(did you mean "experts_per_token"\?\)/);
  await failsWith(recipe({ gate: 'cheap' }), /field gate_mode: unknown gate_mode "cheap"/);
  await failsWith(recipe({ extra: 'experts_per_token: 0\n' }), /Experts per token must be >= 1/);
  await failsWith(recipe({ extra: 'experts_per_token: 3\n' }), /Must include at least as many experts as experts_per_token/);
  await failsWith(recipe().replace('    positive_prompts: ["code"]\n', ''), /Expert 1 has no positive prompts/);
  await failsWith(recipe({ prompt2: 'math' }), /prompts are identical for all experts/);
  await failsWith(recipe({ b: join(models, 'a') }), /All of your expert models are the same/);
});

test('model errors name the model and what differs', async () => {
  await failsWith(recipe({ b: join(models, 'nope') }), /r\d+\.yml:6:\d+, field experts\[1\]\.source_model: model reference ".*nope": local folder .*nope does not exist/);
  const wide = copyModel(TINY('b'), join(dir, 'wide'));
  const cfg = JSON.parse(readFileSync(join(wide, 'config.json'), 'utf8'));
  cfg.intermediate_size = 256;
  writeFileSync(join(wide, 'config.json'), JSON.stringify(cfg));
  await failsWith(recipe({ b: wide }), /experts\[1\] .*wide has intermediate_size 256 but the base model .*a has 128/);
});

test('corrupt safetensors files are refused with the file and the problem', async () => {
  const corrupt = (name: string, mutate: (b: Buffer) => Buffer) => {
    const m = copyModel(TINY('b'), join(dir, name));
    const f = join(m, 'model.safetensors');
    writeFileSync(f, mutate(readFileSync(f)));
    return m;
  };
  const headerOf = (b: Buffer) => JSON.parse(b.subarray(8, 8 + Number(b.readBigUInt64LE(0))).toString());
  const withHeader = (b: Buffer, h: object) => {
    const old = Number(b.readBigUInt64LE(0));
    let json = JSON.stringify(h);
    json = json.padEnd(old, ' ');
    assert.equal(json.length, old);
    return Buffer.concat([b.subarray(0, 8), Buffer.from(json), b.subarray(8 + old)]);
  };
  await failsWith(recipe({ b: corrupt('trunc', (b) => b.subarray(0, b.length - 1000)) }), /trunc\/model\.safetensors, tensor .*: data_offsets .* run past the end of the data/);
  await failsWith(recipe({ b: corrupt('pastend', (b) => { const c = Buffer.from(b); c.writeBigUInt64LE(BigInt(b.length)); return c; }) }), /pastend\/model\.safetensors: safetensors header length \d+ runs past the end of the file/);
  await failsWith(recipe({ b: corrupt('overlap', (b) => {
    const h = headerOf(b);
    const names = Object.keys(h).filter((k) => k !== '__metadata__');
    h[names[1]!].data_offsets = [h[names[0]!].data_offsets[0], h[names[0]!].data_offsets[0] + (h[names[1]!].data_offsets[1] - h[names[1]!].data_offsets[0])];
    return withHeader(b, h);
  }) }), /overlap\/model\.safetensors, tensor .*: data_offsets .* overlap tensor/);
  await failsWith(recipe({ b: corrupt('dtype', (b) => {
    const h = headerOf(b);
    h['model.norm.weight'].dtype = 'F33';
    return withHeader(b, h);
  }) }), /dtype\/model\.safetensors, tensor model\.norm\.weight: unknown dtype "F33"/);
});

test('a tensor missing from an expert is named with its file, before any output', async () => {
  const m = copyModel(TINY('b'), join(dir, 'missing'));
  const f = join(m, 'model.safetensors');
  const w = await SafetensorsWeights.openFolder(m);
  const keep = w.names().filter((x) => x !== 'model.layers.1.mlp.up_proj.weight');
  const bytes = new Map<string, Buffer>();
  for (const k of keep) bytes.set(k, await readTensorBytes(w.get(k)));
  await writeShard(f, keep.map((k) => ({ name: k, dtype: w.get(k).dtype, shape: w.get(k).shape })), (t) => [bytes.get(t.name)!]);
  await failsWith(recipe({ b: m }), /missing\/model\.safetensors, tensor model\.layers\.1\.mlp\.up_proj\.weight: tensor is missing/);
});

test('an existing folder we did not write is kept unless --overwrite', async () => {
  const d = tempDir();
  writeFileSync(join(d, 'moe.yml'), recipe());
  const out = join(d, 'out');
  mkdirSync(out);
  writeFileSync(join(out, 'precious.txt'), 'keep me');
  const r = await mergekitMoe(['moe.yml', 'out'], d);
  assert.equal(r.exitCode, 1);
  assert.match(r.stderr, /error: .*out: output folder exists, is not empty and was not written by moe-forge; pass --overwrite/);
  assert.equal(readFileSync(join(out, 'precious.txt'), 'utf8'), 'keep me');
  const r2 = await mergekitMoe(['moe.yml', 'out', '--overwrite'], d);
  assert.equal(r2.exitCode, 0, r2.stderr);
  assert.ok(existsSync(join(out, 'model.safetensors.index.json')) && !existsSync(join(out, 'precious.txt')));
  // A folder we wrote is replaced without the flag.
  const r3 = await mergekitMoe(['moe.yml', 'out', '--random-seed', '3'], d);
  assert.equal(r3.exitCode, 0, r3.stderr);
});

test('command-line errors', async () => {
  const d = tempDir();
  assert.match((await mergekitMoe([], d)).stderr, /expected CONFIG_PATH and OUT_PATH/);
  assert.match((await mergekitMoe(['nope.yml', 'out'], d)).stderr, /nope\.yml: CONFIG_PATH does not exist/);
  writeFileSync(join(d, 'moe.yml'), recipe());
  assert.match((await mergekitMoe(['moe.yml', 'out', '--out-shard-size', '5q'], d)).stderr, /--out-shard-size expects a number with an optional k, m, b or g suffix/);
  assert.match((await mergekitMoe(['moe.yml', 'out', '--layout', 'packed'], d)).stderr, /--layout must be classic or fused/);
  assert.match((await mergekitMoe(['moe.yml', 'out', '--bogus'], d)).stderr, /unknown option --bogus/);
  assert.match((await mergekitMoe(['moe.yml', 'out', '--no-safe-serialization'], d)).stderr, /writes safetensors only/);
  const v = await mergekitMoe(['moe.yml', 'out', '-v', '--load-in-8bit', '--clone-tensors', '--allow-crimes'], d);
  assert.equal(v.exitCode, 0, v.stderr);
  assert.match(v.stderr, /--clone-tensors has no effect/);
  assert.match(v.stderr, /--allow-crimes has no effect/);
  assert.match(v.stderr, /--load-in-4bit\/--load-in-8bit are unnecessary/);
  assert.doesNotMatch(v.stderr, /debug:/);
  const vv = await mergekitMoe(['moe.yml', 'out-vv', '-vv'], d);
  assert.equal(vv.exitCode, 0, vv.stderr);
  assert.match(vv.stderr, /debug: architecture Mixtral: the recipe names no architecture; compatible: .*Mixtral/);
  assert.match(vv.stderr, /debug: model \S*models[/\\]a: local, \S*models[/\\]a\n/);
  assert.match(vv.stderr, /debug: model-00001-of-00004\.safetensors: 2 tensors, \d+ bytes, content [0-9a-f]{12}; no shard of that name before/);
  assert.match((await mergekitMoe(['--help'], d)).stdout, /Usage: mergekit-moe CONFIG_PATH OUT_PATH/);
  const trust = await mergekitMoe(['moe.yml', 'out', '--trust-remote-code'], d);
  assert.equal(trust.exitCode, 0, trust.stderr);
  assert.match(trust.stderr, /--trust-remote-code is refused: moe-forge never downloads or runs model code/);
});
