/**
 * A plain float64 forward pass of a merged DeepSeek-MoE folder (Llama attention, default RoPE, full causal
 * attention), written for tests only: softmax router over the experts, top-k, weights renormalised over the top-k
 * (norm_topk_prob), plus the ungated shared expert. Returns the L+1 hidden states as transformers does; each layer's
 * router logits ([T, E]) are pushed onto `routerLogits` when given.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsWeights, decodeFloats, readTensorBytes } from '../../libs/safetensors';
import { linear, rmsNorm } from './forward-reference';

type Vec = Float64Array;

function rope(x: Vec, T: number, heads: number, d: number, theta: number): void {
  const half = d / 2;
  for (let t = 0; t < T; t++) for (let h = 0; h < heads; h++) for (let k = 0; k < half; k++) {
    const a = t / theta ** ((2 * k) / d);
    const o = (t * heads + h) * d;
    const x0 = x[o + k]!, x1 = x[o + k + half]!;
    x[o + k] = x0 * Math.cos(a) - x1 * Math.sin(a);
    x[o + k + half] = x1 * Math.cos(a) + x0 * Math.sin(a);
  }
}

/** SiLU-gated MLP on one token. */
function mlp(x: Vec, gate: Vec, up: Vec, down: Vec, H: number, I: number): Vec {
  const g = linear(x, 1, gate, I, H), u = linear(x, 1, up, I, H);
  for (let i = 0; i < I; i++) g[i] = (g[i]! / (1 + Math.exp(-g[i]!))) * u[i]!;
  return linear(g, 1, down, H, I);
}

export async function deepseekMoeHiddenStates(dir: string, ids: number[], routerLogits?: Float64Array[]): Promise<Float64Array[]> {
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const w = await SafetensorsWeights.openFolder(dir);
  const load = async (name: string) => {
    const loc = w.get(name);
    return Float64Array.from(decodeFloats(await readTensorBytes(loc), loc.dtype));
  };
  const H: number = cfg.hidden_size, nH: number = cfg.num_attention_heads, nKV: number = cfg.num_key_value_heads;
  const D: number = cfg.head_dim ?? H / nH, I: number = cfg.moe_intermediate_size, E: number = cfg.n_routed_experts, K: number = cfg.num_experts_per_tok;
  const eps: number = cfg.rms_norm_eps, theta: number = cfg.rope_theta ?? 10000, T = ids.length;
  if (cfg.scoring_func !== 'softmax' || cfg.norm_topk_prob !== true) throw new Error('only softmax scoring with norm_topk_prob');
  const emb = await load('model.embed_tokens.weight');
  let h = new Float64Array(T * H);
  ids.forEach((id, t) => h.set(emb.subarray(id * H, (id + 1) * H), t * H));
  const out: Float64Array[] = [h];
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    const p = `model.layers.${l}.`;
    const x = rmsNorm(h, H, await load(p + 'input_layernorm.weight'), eps);
    const q = linear(x, T, await load(p + 'self_attn.q_proj.weight'), nH * D, H);
    const k = linear(x, T, await load(p + 'self_attn.k_proj.weight'), nKV * D, H);
    const v = linear(x, T, await load(p + 'self_attn.v_proj.weight'), nKV * D, H);
    rope(q, T, nH, D, theta);
    rope(k, T, nKV, D, theta);
    const ctx = new Float64Array(T * nH * D);
    for (let hd = 0; hd < nH; hd++) {
      const kv = Math.floor(hd / (nH / nKV));
      for (let i = 0; i < T; i++) {
        const s = Array.from({ length: i + 1 }, (_, j) => {
          let d = 0;
          for (let c = 0; c < D; c++) d += q[(i * nH + hd) * D + c]! * k[(j * nKV + kv) * D + c]!;
          return d / Math.sqrt(D);
        });
        const m = Math.max(...s), e = s.map((z) => Math.exp(z - m)), z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= i; j++) for (let c = 0; c < D; c++) ctx[(i * nH + hd) * D + c]! += (e[j]! / z) * v[(j * nKV + kv) * D + c]!;
      }
    }
    const o = linear(ctx, T, await load(p + 'self_attn.o_proj.weight'), H, nH * D);
    const h1 = Float64Array.from(h, (a, i) => a + o[i]!);
    const x2 = rmsNorm(h1, H, await load(p + 'post_attention_layernorm.weight'), eps);
    const router = await load(p + 'mlp.gate.weight');
    const experts = await Promise.all(Array.from({ length: E }, async (_, e) => [await load(`${p}mlp.experts.${e}.gate_proj.weight`), await load(`${p}mlp.experts.${e}.up_proj.weight`), await load(`${p}mlp.experts.${e}.down_proj.weight`)] as const));
    const shared = cfg.n_shared_experts ? [await load(`${p}mlp.shared_experts.gate_proj.weight`), await load(`${p}mlp.shared_experts.up_proj.weight`), await load(`${p}mlp.shared_experts.down_proj.weight`)] : null;
    const layerLogits = new Float64Array(T * E);
    routerLogits?.push(layerLogits);
    for (let t = 0; t < T; t++) {
      const xt = x2.subarray(t * H, (t + 1) * H);
      const logits = linear(xt, 1, router, E, H);
      layerLogits.set(logits, t * E);
      const m = Math.max(...logits), ex = Array.from(logits, (z) => Math.exp(z - m)), z = ex.reduce((a, b) => a + b, 0);
      const probs = ex.map((e) => e / z);
      const top = probs.map((pr, e) => [pr, e] as const).sort((a, b) => b[0] - a[0]).slice(0, K);
      const norm = top.reduce((a, [pr]) => a + pr, 0);
      const y = new Float64Array(H);
      for (const [pr, e] of top) {
        const r = mlp(xt, experts[e]![0], experts[e]![1], experts[e]![2], H, I);
        for (let i = 0; i < H; i++) y[i]! += (pr / norm) * r[i]!;
      }
      if (shared) {
        const r = mlp(xt, shared[0]!, shared[1]!, shared[2]!, H, I);
        for (let i = 0; i < H; i++) y[i]! += r[i]!;
      }
      for (let i = 0; i < H; i++) h1[t * H + i]! += y[i]!;
    }
    h = h1;
    out.push(h);
  }
  out[cfg.num_hidden_layers] = rmsNorm(h, H, await load('model.norm.weight'), eps);
  return out;
}
