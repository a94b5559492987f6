import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsWeights, readTensorBytes, decodeFloats, bf16BitsToF32, f32ToBf16Bits } from '../../libs/safetensors';
import { mergekitMoe } from '../helpers/cli';
import { assertMatchesManifest, manifest } from '../helpers/manifest';
import { FIXTURES, tempDir } from '../helpers/tmp';

const PARITY = join(FIXTURES, 'parity');

test('mergekit-moe reproduces the reference cheap_embed merge (classic layout)', async () => {
  const out = join(tempDir(), 'out');
  const r = await mergekitMoe(['mixtral-cheap_embed.yml', out], PARITY);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.doesNotMatch(r.stderr, /power of two/);
  await assertMatchesManifest(out, manifest('mixtral-cheap_embed.classic.manifest.json'), 1e-6);
  assert.equal(readFileSync(join(out, 'mergekit_moe_config.yml'), 'utf8'), readFileSync(join(PARITY, 'mixtral-cheap_embed.yml'), 'utf8'));
  const tc = JSON.parse(readFileSync(join(out, 'tokenizer_config.json'), 'utf8'));
  assert.equal(tc.pad_token, '<s>');
  assert.equal(tc.padding_side, 'left');
  // Grouped shards by default (routers, base, each expert); --shard-order reference gives the single file (shards.test.ts).
  assert.ok(existsSync(join(out, 'model.safetensors.index.json')));
  const card = readFileSync(join(out, 'README.md'), 'utf8');
  // Local models: no base_model in the front matter (the Hub takes repo ids only); the folders are in the body.
  assert.match(card, /^---\ntags:\n/);
  // Local folders are named as the recipe names them: the card does not depend on where the models lie.
  assert.ok(card.includes('`../tiny-llama/tiny-a`'), card);
  assert.ok(!card.includes(FIXTURES), card);
  assert.match(card, /Mixtral/);
});

test('--layout fused reproduces the reference fused layout', async () => {
  const out = join(tempDir(), 'out');
  const r = await mergekitMoe(['mixtral-cheap_embed.yml', out, '--layout', 'fused'], PARITY);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /WARNING: --layout fused .*transformers 4 does not read them.*llama\.cpp's convert_hf_to_gguf\.py cannot convert a fused Mixtral/);
  await assertMatchesManifest(out, manifest('mixtral-cheap_embed.fused.manifest.json'), 1e-6);
});

test('dtype: bfloat16 gives the round-to-nearest-even bf16 of every source tensor', async () => {
  const d = tempDir();
  const recipe = readFileSync(join(PARITY, 'mixtral-cheap_embed.yml'), 'utf8').replace(/^/, 'dtype: bfloat16\n').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama'));
  writeFileSync(join(d, 'moe.yml'), recipe);
  const out = join(d, 'out');
  const r = await mergekitMoe(['moe.yml', out], d);
  assert.equal(r.exitCode, 0, r.stderr);
  const m = manifest('mixtral-cheap_embed.classic.manifest.json');
  const ref = join(d, 'f32');
  writeFileSync(join(d, 'moe32.yml'), recipe.replace('dtype: bfloat16', 'dtype: float32'));
  assert.equal((await mergekitMoe(['moe32.yml', ref], d)).exitCode, 0);
  const wb = await SafetensorsWeights.openFolder(out);
  const wf = await SafetensorsWeights.openFolder(ref);
  for (const name of Object.keys(m.tensors)) {
    const b = wb.get(name);
    assert.equal(b.dtype, 'BF16', name);
    const got = decodeFloats(await readTensorBytes(b), 'BF16');
    const src = decodeFloats(await readTensorBytes(wf.get(name)), 'F32');
    for (let i = 0; i < src.length; i++) if (got[i] !== bf16BitsToF32(f32ToBf16Bits(src[i]!))) assert.fail(`${name}[${i}]: ${got[i]} is not the RNE bf16 of ${src[i]}`);
  }
  assert.equal(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).dtype, 'bfloat16');
});
