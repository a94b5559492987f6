/** Qwen2-MoE specifics: zero attention biases sized by the config's head_dim, the shared expert's gate and noise. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { weightSplit } from '../helpers/manifest';
import { loadTokenizer } from '../../libs/tokenizer';
import { readAll, recipeYaml, tinyFamilyModel } from '../helpers/arch-models';
import { TINY, tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-qwen2-');

test('zero q/k/v biases for a Llama base use its decoupled head_dim (the reference would use hidden/heads)', async () => {
  // hidden 16, 2 heads, 1 KV head, head_dim 12: the reference's hidden // heads = 8 would give 16- and 8-long biases
  // for 24- and 12-row projections, which Qwen2MoeForCausalLM cannot load.
  const over = { headDim: 12 };
  const base = await tinyFamilyModel(join(dir, 'hd-base'), 'llama', 1, over);
  const a = await tinyFamilyModel(join(dir, 'hd-a'), 'llama', 2, over);
  const b = await tinyFamilyModel(join(dir, 'hd-b'), 'llama', 3, over);
  const recipe = join(dir, 'hd.yml');
  writeFileSync(recipe, recipeYaml({ base, gate: 'cheap_embed', dtype: 'bfloat16', experts: [{ model: a, prompts: ['sums'] }, { model: b, prompts: ['poems'] }], shared: [{ model: base, prompts: ['text'] }] }));
  const out = join(dir, 'hd-out');
  await mergeRecipe({ recipeFile: recipe, outPath: out, modelBaseDir: dir });
  const t = await readAll(out);
  for (let l = 0; l < 2; l++) {
    for (const [proj, len] of [['q_proj', 24], ['k_proj', 12], ['v_proj', 12]] as const) {
      const bias = t.get(`model.layers.${l}.self_attn.${proj}.bias`)!;
      assert.deepEqual(bias.shape, [len], `${proj} bias length`);
      assert.equal(bias.dtype, 'BF16');
      assert.ok(bias.values.every((x) => x === 0));
      assert.equal(t.get(`model.layers.${l}.self_attn.${proj}.weight`)!.shape[0], len, `${proj} rows match its bias`);
    }
    assert.equal(t.has(`model.layers.${l}.self_attn.o_proj.bias`), false, 'no o_proj bias');
  }
});

test('shared_expert_gate [1, H] is the shared expert\'s own gate row; noise and residual_scale reach the shared expert', async () => {
  const base = await tinyFamilyModel(join(dir, 'g-base'), 'qwen2', 1);
  const a = await tinyFamilyModel(join(dir, 'g-a'), 'qwen2', 2);
  const recipe = join(dir, 'g.yml');
  const sharedPrompts = ['general text about anything', 'and more'];
  writeFileSync(recipe, recipeYaml({ base, gate: 'cheap_embed', topK: 1, experts: [{ model: a, prompts: ['sums'] }, { model: base, prompts: ['poems'] }], shared: [{ model: a, prompts: sharedPrompts, noise: 0.01, residual: 2 }] }));
  const out = join(dir, 'g-out');
  await mergeRecipe({ recipeFile: recipe, outPath: out, modelBaseDir: dir, seed: 3 });
  const t = await readAll(out);
  const src = await readAll(a);

  // cheap_embed: normalize(sum of the prompts' token embeddings), the same row for every layer (as the reference builds it).
  const tok = await loadTokenizer(base);
  const emb = (await readAll(base)).get('model.embed_tokens.weight')!.values;
  const H = 16;
  const sum = new Float64Array(H);
  for (const p of sharedPrompts) for (const id of tok.encodePrompt(p)) for (let k = 0; k < H; k++) sum[k] += emb[id * H + k]!;
  const norm = Math.hypot(...sum);
  for (let l = 0; l < 2; l++) {
    const g = t.get(`model.layers.${l}.mlp.shared_expert_gate.weight`)!;
    assert.deepEqual(g.shape, [1, H]);
    for (let k = 0; k < H; k++) assert.ok(Math.abs(g.values[k]! - sum[k]! / norm) < 1e-6, `layer ${l} shared gate [${k}]`);
    assert.deepEqual(t.get(`model.layers.${l}.mlp.gate.weight`)!.shape, [2, H]);
  }
  // Grouped shards: the routers, shared_expert_gate included, alone in the first shard; the shared expert in its own.
  const split = weightSplit(out);
  const files = Object.keys(split);
  assert.deepEqual(split[files[0]!]!.sort(), [0, 1].flatMap((l) => [`model.layers.${l}.mlp.gate.weight`, `model.layers.${l}.mlp.shared_expert_gate.weight`]));
  const sharedShard = files.filter((f) => split[f]!.some((n) => n.includes('.shared_expert.')));
  assert.equal(sharedShard.length, 1);
  assert.ok(split[sharedShard[0]!]!.every((n) => n.includes('.shared_expert.')), 'the shared expert\'s shard holds only its tensors');

  // noise_scale 0.01 on every projection, then ×2 on down_proj only.
  for (const proj of ['gate_proj', 'up_proj', 'down_proj']) {
    const got = t.get(`model.layers.0.mlp.shared_expert.${proj}.weight`)!.values;
    const was = src.get(`model.layers.0.mlp.${proj}.weight`)!.values;
    const s = proj === 'down_proj' ? 2 : 1;
    let ss = 0;
    for (let i = 0; i < got.length; i++) ss += (got[i]! / s - was[i]!) ** 2;
    const sd = Math.sqrt(ss / got.length);
    assert.ok(sd > 0.007 && sd < 0.013, `${proj}: noise sd ${sd}`);
  }
  // The routed copy of the same model is not noised.
  assert.ok(t.get('model.layers.0.mlp.experts.0.up_proj.weight')!.bytes.equals(src.get('model.layers.0.mlp.up_proj.weight')!.bytes));
});

test('a tied base gets an explicit lm_head (its embeddings) and tie_word_embeddings false; an untied base keeps its own head', async () => {
  const base = await tinyFamilyModel(join(dir, 't-base'), 'qwen2', 1, {}, { tie_word_embeddings: true });
  const a = await tinyFamilyModel(join(dir, 't-a'), 'qwen2', 2);
  const recipe = join(dir, 't.yml');
  writeFileSync(recipe, recipeYaml({ base, gate: 'random', topK: 1, experts: [{ model: a }, { model: base }], shared: [{ model: a }] }));
  const out = join(dir, 't-out');
  await mergeRecipe({ recipeFile: recipe, outPath: out, modelBaseDir: dir });
  const t = await readAll(out);
  assert.ok(t.get('lm_head.weight')!.bytes.equals(t.get('model.embed_tokens.weight')!.bytes), 'lm_head is the embedding matrix');
  assert.equal(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).tie_word_embeddings, false);

  // tiny-a has an untied lm_head of its own.
  const untied = join(dir, 'u.yml');
  writeFileSync(untied, recipeYaml({ base: TINY('a'), gate: 'random', architecture: 'qwen', experts: [{ model: TINY('b') }, { model: TINY('c') }], shared: [{ model: TINY('a') }] }));
  await mergeRecipe({ recipeFile: untied, outPath: join(dir, 'u-out'), modelBaseDir: dir });
  const u = await readAll(join(dir, 'u-out'));
  const src = await readAll(TINY('a'));
  assert.ok(u.get('lm_head.weight')!.bytes.equals(src.get('lm_head.weight')!.bytes));
  assert.ok(!u.get('lm_head.weight')!.bytes.equals(src.get('model.embed_tokens.weight')!.bytes));
});
