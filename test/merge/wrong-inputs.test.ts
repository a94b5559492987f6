import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { SafetensorsWeights, readTensorBytes, writeShard } from '../../libs/safetensors';
import { copyModel, tempDir, TINY } from '../helpers/tmp';
import { mergeRefused } from '../helpers/refused';

// Inputs that would give a wrong model with exit 0 if they were not refused before any output.
const dir = tempDir();
const models = join(dir, 'models');
mkdirSync(models);
for (const n of ['a', 'b'] as const) copyModel(TINY(n), join(models, n));

const recipe = (base: string, b: string, gate = 'random') => `base_model: ${base}
gate_mode: ${gate}
experts:
  - source_model: ${join(models, 'a')}
    positive_prompts: ["math"]
  - source_model: ${b}
    positive_prompts: ["code"]
`;

interface T { name: string; dtype: string; shape: number[]; bytes: Buffer }

/** A copy of a fixture model with its tensors rewritten by `edit` (real safetensors written by our writer). */
async function altered(src: string, name: string, edit: (t: T) => T): Promise<string> {
  const m = copyModel(src, join(dir, name));
  const w = await SafetensorsWeights.openFolder(m);
  const ts: T[] = [];
  for (const k of w.names()) {
    const loc = w.get(k);
    ts.push(edit({ name: k, dtype: loc.dtype, shape: loc.shape, bytes: await readTensorBytes(loc) }));
  }
  const byName = new Map(ts.map((t) => [t.name, t]));
  await writeShard(join(m, 'model.safetensors'), ts.map(({ name, dtype, shape }) => ({ name, dtype, shape })), (t) => [byName.get(t.name)!.bytes]);
  return m;
}

const refused = (text: string, re: RegExp) => mergeRefused(dir, text, re);

test('a tensor whose shape disagrees with config.json is refused before output, naming file, tensor, expected and actual', async () => {
  const transposed = await altered(TINY('b'), 'transposed', (t) => (t.name === 'model.layers.1.mlp.gate_proj.weight' ? { ...t, shape: [t.shape[1]!, t.shape[0]!] } : t));
  await refused(recipe(join(models, 'a'), transposed), /transposed\/model\.safetensors, tensor model\.layers\.1\.mlp\.gate_proj\.weight: model .*transposed has shape \[64, 128\] but .*config\.json implies \[128, 64\]/);
  // The fused layout would stack these bytes into right-looking shapes: refused all the same.
  const f = join(dir, 'fused.yml');
  writeFileSync(f, recipe(join(models, 'a'), transposed));
  await assert.rejects(mergeRecipe({ recipeFile: f, outPath: join(dir, 'fused-out'), modelBaseDir: dir, cacheDir: join(dir, 'cache'), layout: 'fused' }), /gate_proj\.weight: .* has shape \[64, 128\]/);

  const kHalf = await altered(TINY('a'), 'k-half', (t) => (t.name === 'model.layers.0.self_attn.k_proj.weight' ? { ...t, shape: [t.shape[0]! / 2, t.shape[1]!], bytes: t.bytes.subarray(0, t.bytes.length / 2) } : t));
  await refused(recipe(kHalf, join(models, 'b')), /k-half\/model\.safetensors, tensor model\.layers\.0\.self_attn\.k_proj\.weight: model .*k-half has shape \[16, 64\] but .*implies \[32, 64\]/);

  // config.json says 1024 tokens, the embedding has 512 rows.
  const vocab = copyModel(TINY('a'), join(dir, 'vocab'));
  const cfg = JSON.parse(readFileSync(join(vocab, 'config.json'), 'utf8'));
  cfg.vocab_size = 1024;
  writeFileSync(join(vocab, 'config.json'), JSON.stringify(cfg));
  await refused(recipe(vocab, join(models, 'b')), /vocab\/model\.safetensors, tensor model\.embed_tokens\.weight: model .*vocab has shape \[512, 64\] but .*vocab\/config\.json implies \[1024, 64\]/);
});

test('FP8 and integer expert weights are refused at fetch with model, file, tensor and dtype', async () => {
  const fp8 = await altered(TINY('b'), 'fp8', (t) => (t.name === 'model.layers.0.mlp.up_proj.weight' ? { ...t, dtype: 'F8_E4M3', bytes: Buffer.alloc(t.bytes.length / 4, 0x38) } : t));
  await refused(recipe(join(models, 'a'), fp8), /fp8\/model\.safetensors, tensor model\.layers\.0\.mlp\.up_proj\.weight: model .*fp8 stores this tensor as F8_E4M3; only F32, F16, BF16, F64/);
  const int8 = await altered(TINY('b'), 'int8', (t) => (t.name === 'model.layers.1.mlp.down_proj.weight' ? { ...t, dtype: 'I8', bytes: Buffer.alloc(t.bytes.length / 4, 1) } : t));
  await refused(recipe(join(models, 'a'), int8), /int8\/model\.safetensors, tensor model\.layers\.1\.mlp\.down_proj\.weight: model .*int8 stores this tensor as I8/);
});

test('NaN or Inf in the base weights that feed the routers is an error naming the model and layer', async () => {
  const nanEmbed = await altered(TINY('a'), 'nan-embed', (t) => (t.name === 'model.embed_tokens.weight' ? { ...t, bytes: Buffer.from(new Float32Array(t.bytes.length / 4).fill(NaN).buffer) } : t));
  await refused(recipe(nanEmbed, join(models, 'b'), 'cheap_embed'), /token embeddings of base model .*nan-embed for prompt "math" hold NaN or Inf at the token embeddings/);
  const infMlp = await altered(TINY('a'), 'inf-mlp', (t) => (t.name === 'model.layers.0.mlp.down_proj.weight' ? { ...t, bytes: Buffer.from(new Float32Array(t.bytes.length / 4).fill(Infinity).buffer) } : t));
  await refused(recipe(infMlp, join(models, 'b'), 'hidden'), /hidden states of base model .*inf-mlp for prompt "math" hold NaN or Inf at the output of layer 0 \(input of layer 1\)/);
});
