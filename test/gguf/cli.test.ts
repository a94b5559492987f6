/**
 * `mergekit-moe CONFIG OUT --gguf TYPE` as a user runs it: incremental (an unchanged rebuild rewrites nothing, a
 * prompt edit rewrites the routers' shard and the GGUF, whose routers then match the shard's), `--gguf-only`,
 * and bad input refused in one line.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergekitMoe } from '../helpers/cli';
import { FIXTURES, tempDir } from '../helpers/tmp';
import { readGguf, readTensorData } from '../../libs/gguf';
import { SafetensorsWeights, readTensorBytes, decodeFloats } from '../../libs/safetensors';

const dir = tempDir('moe-forge-gguf-cli-');
const base = JSON.stringify(join(FIXTURES, 'families', 'mistral', 'model'));
const tiny = (n: string) => JSON.stringify(join(FIXTURES, 'tiny-llama', `tiny-${n}`));
const recipe = (prompt: string) => `base_model: ${tiny('a')}\ngate_mode: cheap_embed\nexperts_per_token: 2\nexperts:\n  - source_model: ${tiny('b')}\n    positive_prompts: ["code and programs"]\n  - source_model: ${tiny('c')}\n    positive_prompts: [${JSON.stringify(prompt)}]\n`;

async function tensors(file: string) {
  const g = await readGguf(file);
  const out = new Map<string, Buffer>();
  for (const t of g.tensors) out.set(t.name, await readTensorData(file, t));
  return out;
}

test('--gguf is incremental: unchanged rebuild rewrites nothing; a prompt edit rewrites the routers and the GGUF', async () => {
  const yml = join(dir, 'moe.yml');
  const out = join(dir, 'out');
  writeFileSync(yml, recipe('poems and stories'));
  const first = await mergekitMoe([yml, out, '--gguf', 'q8_0', '-v'], dir);
  assert.equal(first.exitCode, 0, first.stderr);
  const gguf = join(out, 'model-q8_0.gguf');
  const before = statSync(gguf);
  const was = await tensors(gguf);

  const again = await mergekitMoe([yml, out, '--gguf', 'q8_0', '-v'], dir);
  assert.equal(again.exitCode, 0, again.stderr);
  assert.match(again.stdout, /^unchanged /);
  const still = statSync(gguf);
  assert.equal(still.ino, before.ino);
  assert.equal(still.mtimeMs, before.mtimeMs);

  writeFileSync(yml, recipe('cooking recipes and kitchens'));
  const edited = await mergekitMoe([yml, out, '--gguf', 'q8_0', '-v'], dir);
  assert.equal(edited.exitCode, 0, edited.stderr);
  assert.match(edited.stderr, /writing model-q8_0\.gguf/);
  // The GGUF starts as a copy of the previous one: only the routers' tensors are encoded, nothing is read back.
  assert.match(edited.stderr, /the previous one's bytes of \d+ unchanged tensors/);
  assert.doesNotMatch(edited.stderr, /read back/);
  // Only the routers changed: the expert and base shards were kept.
  assert.match(edited.stderr, /kept model-0000\d-of-0000\d\.safetensors/);
  const now = await tensors(gguf);
  assert.deepEqual([...now.keys()], [...was.keys()]);
  for (const [name, bytes] of now) {
    if (/ffn_gate_inp/.test(name)) assert.ok(!bytes.equals(was.get(name)!), `${name} changed with the prompt`);
    else assert.ok(bytes.equals(was.get(name)!), `${name} unchanged`);
  }
  // The GGUF's routers are the ones now in the safetensors shards (float32 in both here).
  const weights = await SafetensorsWeights.openFolder(out);
  for (const l of [0, 1]) {
    const loc = weights.get(`model.layers.${l}.block_sparse_moe.gate.weight`);
    const st = decodeFloats(await readTensorBytes(loc), loc.dtype);
    const g = now.get(`blk.${l}.ffn_gate_inp.weight`)!;
    assert.deepEqual([...new Float32Array(g.buffer.slice(g.byteOffset, g.byteOffset + g.length))], [...st]);
  }
});

test('--gguf-only writes the same GGUF and no safetensors shards; split, a prompt edit writes the routers\' file alone', async () => {
  const yml = join(dir, 'only.yml');
  writeFileSync(yml, recipe('poems and stories'));
  const full = join(dir, 'full');
  const only = join(dir, 'only');
  for (const [o, extra] of [[full, []], [only, ['--gguf-only']]] as const) {
    const r = await mergekitMoe([yml, o, '--gguf', 'f16', ...extra], dir);
    assert.equal(r.exitCode, 0, r.stderr);
  }
  assert.deepEqual(readdirSync(only).filter((f) => f.includes('safetensors')), []);
  assert.ok(readdirSync(full).some((f) => f.endsWith('.safetensors')));
  const a = await tensors(join(full, 'model-f16.gguf'));
  const b = await tensors(join(only, 'model-f16.gguf'));
  assert.deepEqual([...b.keys()], [...a.keys()]);
  for (const [name, bytes] of a) assert.ok(bytes.equals(b.get(name)!), name);
  // Unchanged: nothing rewritten.
  const again = await mergekitMoe([yml, only, '--gguf', 'f16', '--gguf-only'], dir);
  assert.match(again.stdout, /^unchanged /);
  // Split: a prompt edit writes the routers' file and keeps the others.
  const split = join(dir, 'only-split');
  const s1 = await mergekitMoe([yml, split, '--gguf', 'f16', '--gguf-only', '--gguf-split-max-size', '40k'], dir);
  assert.equal(s1.exitCode, 0, s1.stderr);
  const files = readdirSync(split).filter((f) => f.endsWith('.gguf')).sort();
  assert.ok(files.length >= 3, files.join(', '));
  const ino = () => files.map((f) => statSync(join(split, f)).ino);
  const before = ino();
  writeFileSync(yml, recipe('cooking recipes and kitchens'));
  const s2 = await mergekitMoe([yml, split, '--gguf', 'f16', '--gguf-only', '--gguf-split-max-size', '40k', '-v'], dir);
  assert.equal(s2.exitCode, 0, s2.stderr);
  assert.match(s2.stderr, new RegExp(`writing ${files[0]!.replace(/\./g, '\\.')} `));
  const after = ino();
  assert.notEqual(after[0], before[0]);
  assert.deepEqual(after.slice(1), before.slice(1));
});

test('--gguf-split-max-size: the same tensors in llama.cpp split files; a prompt edit rewrites the first (routers) and keeps the rest', async () => {
  const yml = join(dir, 'split.yml');
  writeFileSync(yml, recipe('poems and stories'));
  const one = join(dir, 'one');
  const out = join(dir, 'split');
  const r1 = await mergekitMoe([yml, one, '--gguf', 'q8_0'], dir);
  assert.equal(r1.exitCode, 0, r1.stderr);
  const first = await mergekitMoe([yml, out, '--gguf', 'q8_0', '--gguf-split-max-size', '40k'], dir);
  assert.equal(first.exitCode, 0, first.stderr);
  const files = readdirSync(out).filter((f) => f.endsWith('.gguf')).sort();
  const n = files.length;
  assert.ok(n >= 3, files.join(', '));
  assert.deepEqual(files, Array.from({ length: n }, (_, i) => `model-q8_0-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.gguf`));
  // Every tensor of the unsplit GGUF once, with its bytes; the routers (and the metadata) in the first file.
  const whole = await tensors(join(one, 'model-q8_0.gguf'));
  const parts = await Promise.all(files.map((f) => tensors(join(out, f))));
  assert.deepEqual(parts.flatMap((p) => [...p.keys()]).sort(), [...whole.keys()].sort());
  for (const p of parts) for (const [name, bytes] of p) assert.ok(bytes.equals(whole.get(name)!), name);
  assert.ok([...parts[0]!.keys()].every((name) => name.includes('ffn_gate_inp')));
  const meta = (await readGguf(join(out, files[0]!))).metadata;
  assert.equal(meta.get('general.architecture')?.value, 'llama');
  assert.deepEqual([meta.get('split.no')?.value, meta.get('split.count')?.value, meta.get('split.tensors.count')?.value], [0, n, whole.size]);
  for (const f of files.slice(1)) assert.equal((await readGguf(join(out, f))).metadata.get('general.architecture'), undefined, f);
  for (const f of files.slice(1)) assert.ok((await readGguf(join(out, f))).tensors.reduce((a, t) => a + t.bytes, 0) <= 40_000 || (await readGguf(join(out, f))).tensors.length === 1, f);

  const inodes = () => files.map((f) => statSync(join(out, f)).ino);
  const before = inodes();
  const again = await mergekitMoe([yml, out, '--gguf', 'q8_0', '--gguf-split-max-size', '40k'], dir);
  assert.match(again.stdout, /^unchanged /);
  assert.deepEqual(inodes(), before);

  writeFileSync(yml, recipe('cooking recipes and kitchens'));
  const edited = await mergekitMoe([yml, out, '--gguf', 'q8_0', '--gguf-split-max-size', '40k', '-v'], dir);
  assert.equal(edited.exitCode, 0, edited.stderr);
  const after = inodes();
  assert.notEqual(after[0], before[0]);
  assert.deepEqual(after.slice(1), before.slice(1));
  for (const f of files.slice(1)) assert.match(edited.stderr, new RegExp(`kept ${f.replace(/\./g, '\\.')} \\(unchanged\\)`));
  const routers = await tensors(join(out, files[0]!));
  for (const [name, bytes] of routers) assert.ok(!bytes.equals(parts[0]!.get(name)!), `${name} changed with the prompt`);

  // Unsplit again: one file, and the split files gone.
  const back = await mergekitMoe([yml, out, '--gguf', 'q8_0'], dir);
  assert.equal(back.exitCode, 0, back.stderr);
  assert.deepEqual(readdirSync(out).filter((f) => f.endsWith('.gguf')), ['model-q8_0.gguf']);
});

test('bad GGUF options and outputs llama.cpp cannot take are refused in one line, before anything is written', async () => {
  const yml = join(dir, 'bad.yml');
  writeFileSync(yml, recipe('poems'));
  const cases: [string[], RegExp][] = [
    [['--gguf', 'q4_k'], /^error: field --gguf: --gguf must be f32, f16, bf16 or q8_0, got "q4_k"$/],
    [['--gguf-only'], /^error: field --gguf-only: --gguf-only needs --gguf TYPE \(f32, f16, bf16 or q8_0\)$/],
    [['--gguf-split-max-size', '5g'], /^error: field --gguf-split-max-size: --gguf-split-max-size needs --gguf TYPE \(f32, f16, bf16 or q8_0\)$/],
    [['--gguf', 'bf16', '--gguf-split-max-size', '0'], /^error: field --gguf-split-max-size: must be a number of bytes from 1 to \d+ \(k, m, b or g suffixes allowed\), got 0$/],
    [['--gguf', 'bf16', '--gguf-split-max-size', '20x'], /^error: field --gguf-split-max-size: --gguf-split-max-size expects a number with an optional k, m, b or g suffix \(e\.g\. 500m, 5B, 20g\), got "20x"$/],
  ];
  for (const [args, line] of cases) {
    const r = await mergekitMoe([yml, join(dir, 'bad-out'), ...args], dir);
    assert.equal(r.exitCode, 1);
    assert.match(r.stderr.trim(), line);
  }
  // DeepSeek without a shared expert: llama.cpp's deepseek graph needs one.
  const ds = join(dir, 'ds.yml');
  writeFileSync(ds, `base_model: ${base}\ngate_mode: random\narchitecture: deepseek\nexperts:\n  - source_model: ${base}\n  - source_model: ${base}\n    noise_scale: 0.01\n`);
  const r = await mergekitMoe([ds, join(dir, 'ds-out'), '--gguf', 'q8_0'], dir);
  assert.equal(r.exitCode, 1);
  assert.match(r.stderr.trim().split('\n').pop()!, /^error: config\.json, field n_shared_experts: GGUF output of a DeepSeek-MoE without shared experts is not supported/);
  assert.ok(!existsSync(join(dir, 'bad-out')) && !existsSync(join(dir, 'ds-out')));
});
