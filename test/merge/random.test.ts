import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { SafetensorsWeights, readTensorBytes, decodeFloats } from '../../libs/safetensors';
import { tempDir, TINY } from '../helpers/tmp';

const d = tempDir();
const recipe = (mode: string) => `base_model: ${TINY('a')}
gate_mode: ${mode}
experts:
  - source_model: ${TINY('b')}
    positive_prompts: ["math"]
  - source_model: ${TINY('c')}
    positive_prompts: ["code"]
    noise_scale: 0.01
`;

function folderDigest(dir: string): Record<string, string> {
  return Object.fromEntries(readdirSync(dir).sort().map((f) => [f, createHash('sha256').update(readFileSync(join(dir, f))).digest('hex')]));
}

async function routerValues(out: string): Promise<Float32Array[]> {
  const w = await SafetensorsWeights.openFolder(out);
  const res: Float32Array[] = [];
  for (let l = 0; l < 2; l++) {
    const loc = w.get(`model.layers.${l}.block_sparse_moe.gate.weight`);
    assert.deepEqual(loc.shape, [2, 64]);
    res.push(decodeFloats(await readTensorBytes(loc), loc.dtype));
  }
  return res;
}

for (const mode of ['random', 'uniform_random']) {
  test(`${mode}: one seed gives byte-identical folders, another seed other routers and noise`, async () => {
    const f = join(d, `${mode}.yml`);
    writeFileSync(f, recipe(mode));
    const run = (out: string, seed: number) => mergeRecipe({ recipeFile: f, outPath: join(d, out), modelBaseDir: d, seed, cacheDir: join(d, 'cache') });
    await run(`${mode}-1`, 7);
    await run(`${mode}-2`, 7);
    await run(`${mode}-3`, 8);
    assert.deepEqual(folderDigest(join(d, `${mode}-1`)), folderDigest(join(d, `${mode}-2`)));
    const a = await routerValues(join(d, `${mode}-1`));
    const b = await routerValues(join(d, `${mode}-3`));
    assert.notDeepEqual(a, b);
    const all = Float32Array.from(a.flatMap((x) => [...x]));
    if (mode === 'random') {
      const rms = Math.sqrt(all.reduce((s, x) => s + x * x, 0) / all.length);
      assert.ok(rms > 0.8 && rms < 1.2, `standard normal, not normalised: rms ${rms}`);
    } else {
      assert.ok(all.every((x) => Math.abs(x) <= 1 / 8), 'within ±1/sqrt(64)');
      assert.ok(Math.max(...all.map(Math.abs)) > 0.1, 'spread over the range');
    }
    // noise_scale 0.01 on expert 1 only: its w1 differs from the source by about 0.01; expert 0 is a copy.
    const out = await SafetensorsWeights.openFolder(join(d, `${mode}-1`));
    const src = await SafetensorsWeights.openFolder(TINY('c'));
    const noisy = decodeFloats(await readTensorBytes(out.get('model.layers.0.block_sparse_moe.experts.1.w1.weight')), 'F32');
    const clean = decodeFloats(await readTensorBytes(src.get('model.layers.0.mlp.gate_proj.weight')), 'F32');
    const diff = Math.sqrt(noisy.reduce((s, x, i) => s + (x - clean[i]!) ** 2, 0) / noisy.length);
    assert.ok(diff > 0.008 && diff < 0.012, `noise rms ${diff}`);
    const copy = await readTensorBytes(out.get('model.layers.0.block_sparse_moe.experts.0.w1.weight'));
    const b0 = await readTensorBytes((await SafetensorsWeights.openFolder(TINY('b'))).get('model.layers.0.mlp.gate_proj.weight'));
    assert.ok(copy.equals(b0));
  });
}

test('a small shard size gives several shards whose index lists every tensor once; tensors read back equal', async () => {
  const f = join(d, 'shards.yml');
  writeFileSync(f, recipe('random').replace('    noise_scale: 0.01\n', ''));
  await mergeRecipe({ recipeFile: f, outPath: join(d, 'one'), modelBaseDir: d, cacheDir: join(d, 'cache') });
  await mergeRecipe({ recipeFile: f, outPath: join(d, 'many'), modelBaseDir: d, cacheDir: join(d, 'cache'), maxShardBytes: 100_000 });
  const files = readdirSync(join(d, 'many')).filter((x) => x.endsWith('.safetensors'));
  assert.ok(files.length > 3, `${files.length} shards`);
  assert.ok(files.every((x) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(x)));
  const index = JSON.parse(readFileSync(join(d, 'many', 'model.safetensors.index.json'), 'utf8'));
  const one = await SafetensorsWeights.openFolder(join(d, 'one'));
  const many = await SafetensorsWeights.openFolder(join(d, 'many'));
  assert.deepEqual(Object.keys(index.weight_map).sort(), one.names().sort());
  let total = 0;
  for (const name of one.names()) {
    const a = await readTensorBytes(one.get(name));
    total += a.length;
    assert.ok(a.equals(await readTensorBytes(many.get(name))), name);
  }
  assert.equal(index.metadata.total_size, total);
});

test('--layout fused on an architecture without a fused layout warns and writes the classic layout', async () => {
  const f = join(d, 'deepseek.yml');
  writeFileSync(f, recipe('random').replace('    noise_scale: 0.01\n', '') + `shared_experts:\n  - source_model: ${TINY('a')}\n    residual_scale: 0.1\n`);
  const warnings: string[] = [];
  await mergeRecipe({ recipeFile: f, outPath: join(d, 'ds'), modelBaseDir: d, cacheDir: join(d, 'cache'), layout: 'fused', warn: (w) => warnings.push(w) });
  assert.ok(warnings.includes('DeepSeek MoE has no fused expert layout; writing its classic per-expert layout (as mergekit-moe does).'), warnings.join('\n'));
  const w = await SafetensorsWeights.openFolder(join(d, 'ds'));
  assert.ok(w.has('model.layers.0.mlp.experts.1.gate_proj.weight') && w.has('model.layers.0.mlp.shared_experts.down_proj.weight'));
});
