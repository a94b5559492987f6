/**
 * Every output architecture over tiny generated models: each tensor is its source's bytes (after residual_scale,
 * the dtype cast and the layout), in the reference's write order; routers have the right shapes; config.json
 * has the reference's keys.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { CACHE_ENV } from '../../libs/cache';
import { readAll, recipeYaml, rowNorms, tinyFamilyModel, writeOrder, expectedBytes, TINY_SIZE, type ExpertYaml, type Family, type ReadTensor } from '../helpers/arch-models';
import { tempDir } from '../helpers/tmp';
import { numberKinds, typedJson } from '../helpers/json-types';

/**
 * Keys the consumer's config class types as float (transformers 5.17's MixtralConfig / Qwen2MoeConfig /
 * Qwen3MoeConfig, DeepSeek's DeepseekConfig), plus rope_theta: written as an int, transformers 5 refuses them.
 */
const COMMON_FLOATS = ['attention_dropout', 'initializer_range', 'rms_norm_eps', 'rope_theta'];
const FLOATS: Record<string, string[]> = {
  Mixtral: [...COMMON_FLOATS, 'router_aux_loss_coef', 'router_jitter_noise'],
  'DeepSeek MoE': [...COMMON_FLOATS, 'aux_loss_alpha'],
  'Qwen MoE': [...COMMON_FLOATS, 'router_aux_loss_coef'],
  'Qwen3 MoE': [...COMMON_FLOATS, 'router_aux_loss_coef'],
};

const dir = tempDir('moe-forge-arch-');
// Hidden modes cache prompt states: keep them out of the user's cache.
process.env[CACHE_ENV] = join(dir, 'cache');
const L = TINY_SIZE.layers, H = TINY_SIZE.hidden, I = TINY_SIZE.intermediate;
const QWEN3_HEAD_DIM = 12; // decoupled from hidden / heads = 8

const models = new Map<string, string>();
async function model(family: Family, seed: number): Promise<string> {
  const key = `${family}-${seed}`;
  if (!models.has(key)) {
    const config: Record<string, unknown> =
      family === 'qwen2' ? { use_sliding_window: false, sliding_window: 4096, max_window_layers: 21, transformers_version: '4.57.1' } : family === 'qwen3' ? { use_sliding_window: false, sliding_window: null, attention_bias: false } : {};
    models.set(key, await tinyFamilyModel(join(dir, key), family, seed, family === 'qwen3' ? { headDim: QWEN3_HEAD_DIM } : {}, config));
  }
  return models.get(key)!;
}

type Want = { name: string; from: string; tensor: string; scale?: number } | { name: string; zeros: number } | { name: string; router: number } | { name: string; fused: { from: string; tensor: string; scale?: number }[] };

interface Case {
  arch: string;
  family: Family;
  experts: ExpertYaml[];
  shared?: ExpertYaml[];
  topK: number;
  dtype?: string;
  layout?: 'fused';
  /** Expected tensors in the reference's write order. */
  want: (base: string, experts: ExpertYaml[], shared: ExpertYaml[]) => Want[];
  config: (raw: Record<string, unknown>, c: Case) => Record<string, unknown>;
  /** Keys whose order matters (DeepSeek writes the dict as is); otherwise keys are sorted. */
  ordered?: boolean;
}

const attn = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];
const copy = (from: string, tensor: string, name = tensor): Want => ({ name, from, tensor });
const mlp = (e: ExpertYaml, l: number, proj: string): { from: string; tensor: string; scale?: number } => ({
  from: e.model,
  tensor: `model.layers.${l}.mlp.${proj}.weight`,
  ...(proj === 'down_proj' && e.residual !== undefined ? { scale: e.residual } : {}),
});
const dtypeName = (c: Case) => (c.dtype ?? 'float32');

/** save_pretrained passes the base keys through, minus its own version key and a null pad id. */
const passThrough = (raw: Record<string, unknown>) => {
  const o = { ...raw };
  delete o.transformers_version;
  return o;
};
const sorted = (o: Record<string, unknown>) => Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]]));

const CASES: Case[] = [
  {
    arch: 'Mixtral',
    family: 'mistral',
    topK: 2,
    experts: [{ model: 'mistral-2', prompts: ['math and numbers'], residual: 0.5 }, { model: 'mistral-3', prompts: ['code in python'] }],
    want: (b, ex) => {
      const out: Want[] = [copy(b, 'model.embed_tokens.weight')];
      for (let l = 0; l < L; l++) {
        const p = `model.layers.${l}`;
        out.push(copy(b, `${p}.input_layernorm.weight`), ...attn.map((a) => copy(b, `${p}.self_attn.${a}.weight`)), copy(b, `${p}.post_attention_layernorm.weight`));
        for (const [proj, w] of [['up_proj', 'w3'], ['gate_proj', 'w1'], ['down_proj', 'w2']] as const) {
          ex.forEach((e, i) => out.push({ name: `${p}.block_sparse_moe.experts.${i}.${w}.weight`, ...mlp(e, l, proj) }));
        }
      }
      out.push(copy(b, 'model.norm.weight'));
      for (let l = 0; l < L; l++) out.push({ name: `model.layers.${l}.block_sparse_moe.gate.weight`, router: ex.length });
      return out;
    },
    config: (raw, c) =>
      sorted({
        ...passThrough(raw),
        rope_scaling: null,
        output_router_logits: false,
        router_aux_loss_coef: 0.001,
        router_jitter_noise: 0.0,
        architectures: ['MixtralForCausalLM'],
        model_type: 'mixtral',
        num_local_experts: c.experts.length,
        num_experts_per_tok: c.topK,
        sliding_window: null,
        torch_dtype: dtypeName(c),
      }),
  },
  {
    arch: 'DeepSeek MoE',
    family: 'llama',
    topK: 2,
    dtype: 'bfloat16',
    experts: [{ model: 'llama-2', prompts: ['math and numbers'], residual: 0.5 }, { model: 'llama-3', prompts: ['code in python'] }, { model: 'llama-4', prompts: ['poems and songs'] }],
    shared: [{ model: 'llama-5', residual: 0.25 }],
    want: (b, ex, sh) => {
      const out: Want[] = [copy(b, 'model.embed_tokens.weight')];
      for (let l = 0; l < L; l++) {
        const p = `model.layers.${l}`;
        out.push(copy(b, `${p}.input_layernorm.weight`), ...attn.map((a) => copy(b, `${p}.self_attn.${a}.weight`)), copy(b, `${p}.post_attention_layernorm.weight`));
        for (const proj of ['up_proj', 'gate_proj', 'down_proj']) {
          ex.forEach((e, i) => out.push({ name: `${p}.mlp.experts.${i}.${proj}.weight`, ...mlp(e, l, proj) }));
          out.push({ name: `${p}.mlp.shared_experts.${proj}.weight`, ...mlp(sh[0]!, l, proj) });
        }
      }
      out.push(copy(b, 'model.norm.weight'));
      for (let l = 0; l < L; l++) out.push({ name: `model.layers.${l}.mlp.gate.weight`, router: ex.length });
      return out;
    },
    // json.dump of the full base dict: every key in place, the new ones appended in the reference's order.
    config: (raw, c) => ({
      ...raw,
      architectures: ['DeepseekForCausalLM'],
      model_type: 'deepseek',
      torch_dtype: 'bfloat16',
      n_routed_experts: 3,
      n_shared_experts: 1,
      num_experts_per_tok: c.topK,
      first_k_dense_replace: 0,
      moe_layer_freq: 1,
      scoring_func: 'softmax',
      norm_topk_prob: true,
      moe_intermediate_size: I,
      auto_map: {
        AutoConfig: 'deepseek-ai/deepseek-moe-16b-base--configuration_deepseek.DeepseekConfig',
        AutoModel: 'deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekModel',
        AutoModelForCausalLM: 'deepseek-ai/deepseek-moe-16b-base--modeling_deepseek.DeepseekForCausalLM',
      },
    }),
    ordered: true,
  },
  {
    arch: 'Qwen MoE',
    family: 'qwen2',
    topK: 1,
    experts: [{ model: 'qwen2-2', prompts: ['math and numbers'] }, { model: 'qwen2-3', prompts: ['code in python'], residual: 0.5 }],
    shared: [{ model: 'qwen2-4', prompts: ['anything at all'], residual: 0.125 }],
    want: (b, ex, sh) => {
      const out: Want[] = [copy(b, 'model.embed_tokens.weight')];
      for (let l = 0; l < L; l++) {
        const p = `model.layers.${l}`;
        out.push(copy(b, `${p}.input_layernorm.weight`));
        for (const proj of ['down_proj', 'gate_proj', 'up_proj']) {
          ex.forEach((e, i) => out.push({ name: `${p}.mlp.experts.${i}.${proj}.weight`, ...mlp(e, l, proj) }));
          out.push({ name: `${p}.mlp.shared_expert.${proj}.weight`, ...mlp(sh[0]!, l, proj) });
        }
        out.push(copy(b, `${p}.post_attention_layernorm.weight`));
        // Qwen2 inputs keep their own attention biases.
        for (const t of ['k_proj.bias', 'k_proj.weight', 'o_proj.weight', 'q_proj.bias', 'q_proj.weight', 'v_proj.bias', 'v_proj.weight']) out.push(copy(b, `${p}.self_attn.${t}`));
      }
      // The generated bases have no lm_head: llama.cpp's qwen2moe needs one, so the embeddings are written as the head.
      out.push(copy(b, 'model.norm.weight'), copy(b, 'model.embed_tokens.weight', 'lm_head.weight'));
      for (let l = 0; l < L; l++) out.push({ name: `model.layers.${l}.mlp.gate.weight`, router: ex.length }, { name: `model.layers.${l}.mlp.shared_expert_gate.weight`, router: 1 });
      return out;
    },
    config: (raw, c) =>
      sorted({
        hidden_act: 'silu',
        initializer_range: 0.02,
        use_cache: true,
        rope_scaling: null,
        attention_dropout: 0.0,
        output_router_logits: false,
        router_aux_loss_coef: 0.001,
        mlp_only_layers: [],
        qkv_bias: true,
        ...passThrough(raw),
        architectures: ['Qwen2MoeForCausalLM'],
        model_type: 'qwen2_moe',
        num_experts: 2,
        num_experts_per_tok: c.topK,
        decoder_sparse_step: 1,
        norm_topk_prob: true,
        sliding_window: null,
        use_sliding_window: false,
        shared_expert_intermediate_size: I,
        moe_intermediate_size: I,
        torch_dtype: dtypeName(c),
      }),
  },
  {
    arch: 'Qwen3 MoE',
    family: 'qwen3',
    topK: 2,
    dtype: 'float16',
    experts: [{ model: 'qwen3-2', prompts: ['math and numbers'] }, { model: 'qwen3-3', prompts: ['code in python'], residual: 0.5 }, { model: 'qwen3-4', prompts: ['poems and songs'] }],
    want: (b, ex) => qwen3Want(b, ex, false),
    config: (raw, c) => qwen3Config(raw, c),
  },
  {
    arch: 'Qwen3 MoE',
    family: 'qwen3',
    topK: 1,
    layout: 'fused',
    experts: [{ model: 'qwen3-2', prompts: ['math and numbers'], residual: 0.5 }, { model: 'qwen3-3', prompts: ['code in python'] }],
    want: (b, ex) => qwen3Want(b, ex, true),
    config: (raw, c) => qwen3Config(raw, c),
  },
];

function qwen3Want(b: string, ex: ExpertYaml[], fused: boolean): Want[] {
  const out: Want[] = [copy(b, 'model.embed_tokens.weight')];
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    out.push(copy(b, `${p}.input_layernorm.weight`));
    if (!fused) for (const proj of ['down_proj', 'gate_proj', 'up_proj']) ex.forEach((e, i) => out.push({ name: `${p}.mlp.experts.${i}.${proj}.weight`, ...mlp(e, l, proj) }));
    for (const t of ['post_attention_layernorm.weight', 'self_attn.k_norm.weight', 'self_attn.k_proj.weight', 'self_attn.q_norm.weight', 'self_attn.q_proj.weight', 'self_attn.v_proj.weight', 'self_attn.o_proj.weight']) out.push(copy(b, `${p}.${t}`));
  }
  out.push(copy(b, 'model.norm.weight'));
  if (fused) {
    for (let l = 0; l < L; l++) {
      out.push({ name: `model.layers.${l}.mlp.experts.gate_up_proj`, fused: ex.flatMap((e) => [mlp(e, l, 'gate_proj'), mlp(e, l, 'up_proj')]) });
      out.push({ name: `model.layers.${l}.mlp.experts.down_proj`, fused: ex.map((e) => mlp(e, l, 'down_proj')) });
    }
  }
  for (let l = 0; l < L; l++) out.push({ name: `model.layers.${l}.mlp.gate.weight`, router: ex.length });
  return out;
}

function qwen3Config(raw: Record<string, unknown>, c: Case): Record<string, unknown> {
  return sorted({
    hidden_act: 'silu',
    initializer_range: 0.02,
    use_cache: true,
    rope_scaling: null,
    max_window_layers: 28,
    attention_dropout: 0.0,
    output_router_logits: false,
    router_aux_loss_coef: 0.001,
    mlp_only_layers: [],
    ...passThrough(raw),
    sliding_window: null,
    architectures: ['Qwen3MoeForCausalLM'],
    model_type: 'qwen3_moe',
    num_experts: c.experts.length,
    num_experts_per_tok: c.topK,
    decoder_sparse_step: 1,
    norm_topk_prob: true,
    moe_intermediate_size: I,
    torch_dtype: dtypeName(c),
  });
}

const OUT_DTYPE: Record<string, string> = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' };
const sourceCache = new Map<string, Map<string, ReadTensor>>();
async function sourceTensors(d: string) {
  if (!sourceCache.has(d)) sourceCache.set(d, await readAll(d));
  return sourceCache.get(d)!;
}

let runs = 0;
async function check(c: Case, gate: string) {
  const resolve = async (e: ExpertYaml) => ({ ...e, model: await model(c.family, Number(e.model.split('-')[1])) });
  const base = await model(c.family, 1);
  const experts = await Promise.all(c.experts.map(resolve));
  const shared = await Promise.all((c.shared ?? []).map(resolve));
  const recipeFile = join(dir, `r${runs}.yml`);
  writeFileSync(recipeFile, recipeYaml({ base, experts, shared: c.shared ? shared : undefined, gate, topK: c.topK, dtype: c.dtype }));
  const out = join(dir, `out${runs++}`);
  const warnings: string[] = [];
  // One tensor per shard in the reference's order, so the index's weight_map records the write order.
  await mergeRecipe({ recipeFile, outPath: out, modelBaseDir: dir, layout: c.layout, maxShardBytes: 1, shardOrder: 'reference', seed: 7, warn: (w) => warnings.push(w) });
  const label = `${c.arch}${c.layout ? ' fused' : ''} (${gate})`;
  // The reference's power-of-two warning is out of date (llama.cpp runs 3-expert Mixtral and Qwen3-MoE).
  assert.ok(!warnings.some((w) => /power of two/.test(w)), `${label}: no power-of-two warning`);
  const fusedWarning = warnings.find((w) => w.startsWith('--layout fused'));
  assert.equal(fusedWarning !== undefined, c.layout === 'fused', `${label}: fused-layout warning`);
  if (fusedWarning) {
    assert.match(fusedWarning, /transformers 4 does not read them/);
    assert.equal(/convert_hf_to_gguf\.py cannot convert a fused Mixtral/.test(fusedWarning), c.arch === 'Mixtral', fusedWarning);
  }

  const want = c.want(base, experts, shared);
  assert.deepEqual(writeOrder(out), want.map((w) => w.name), `${label}: tensor names and write order`);
  const got = await readAll(out);
  const outDtype = OUT_DTYPE[dtypeName(c)]!;
  for (const w of want) {
    const t = got.get(w.name)!;
    assert.equal(t.dtype, outDtype, `${label}: ${w.name} dtype`);
    if ('router' in w) {
      assert.deepEqual(t.shape, [w.router, H], `${label}: ${w.name} shape`);
      if (gate !== 'random') for (const n of rowNorms(t)) assert.ok(Math.abs(n - 1) < 1e-2, `${label}: ${w.name} row norm ${n}`);
      else assert.ok(t.values.some((x) => x !== 0) && t.values.every(Number.isFinite), `${label}: ${w.name} random rows`);
    } else if ('zeros' in w) {
      assert.deepEqual(t.shape, [w.zeros]);
      assert.ok(t.values.every((x) => x === 0));
    } else if ('fused' in w) {
      const parts = await Promise.all(w.fused.map(async (p) => ({ src: (await sourceTensors(p.from)).get(p.tensor)!, scale: p.scale })));
      const [r, k] = parts[0]!.src.shape as [number, number];
      const E = w.name.endsWith('gate_up_proj') ? parts.length / 2 : parts.length;
      assert.deepEqual(t.shape, [E, (parts.length / E) * r, k], `${label}: ${w.name} shape`);
      assert.ok(Buffer.concat(parts.map((p) => expectedBytes(p.src, outDtype, p.scale))).equals(t.bytes), `${label}: ${w.name} bytes`);
    } else {
      const src = (await sourceTensors(w.from)).get(w.tensor)!;
      assert.deepEqual(t.shape, src.shape, `${label}: ${w.name} shape`);
      assert.ok(expectedBytes(src, outDtype, w.scale).equals(t.bytes), `${label}: ${w.name} is not ${w.tensor} of ${w.from}${w.scale ? ` × ${w.scale}` : ''}`);
    }
  }
  const raw = JSON.parse(readFileSync(join(base, 'config.json'), 'utf8'));
  const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
  const expected = c.config(raw, c);
  assert.deepEqual(cfg, expected, `${label}: config.json`);
  assert.deepEqual(Object.keys(cfg), Object.keys(expected), `${label}: config.json key order`);
  // The generated bases write every number as JSON.stringify does (rope_theta 10000, no fractions): the output
  // must still say 10000.0 where the consumer wants a float.
  const kinds = numberKinds(typedJson(readFileSync(join(out, 'config.json'), 'utf8')));
  for (const k of FLOATS[c.arch]!) if (k in cfg) assert.equal(kinds.get(k), 'float', `${label}: config.json ${k} must be written as a float`);
  for (const k of ['rms_norm_eps', 'rope_theta']) assert.ok(k in cfg, `${label}: config.json has ${k}`);
  for (const k of ['num_hidden_layers', 'hidden_size', 'vocab_size']) assert.equal(kinds.get(k), 'int', `${label}: config.json ${k}`);
}

for (const c of CASES) {
  for (const gate of ['random', 'cheap_embed', 'hidden']) {
    test(`${c.arch}${c.layout ? ' (fused layout)' : ''}, gate_mode ${gate}: tensors, write order, routers and config.json`, () => check(c, gate));
  }
}
