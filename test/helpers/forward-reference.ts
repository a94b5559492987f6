/**
 * A plain float64 forward pass of a dense decoder, written independently of libs/forward, for tests only.
 * Returns every position's state for all L+1 entries (entry L after the final norm), as transformers does.
 */
import { readModelConfig, type ModelConfig } from '../../libs/model-folder/config';
import { SafetensorsWeights, decodeFloats, readTensorBytes } from '../../libs/safetensors';

type Mat = Float64Array; // row-major

async function load(w: SafetensorsWeights, name: string): Promise<Float64Array> {
  const loc = w.get(name);
  return Float64Array.from(decodeFloats(await readTensorBytes(loc), loc.dtype));
}

async function loadOpt(w: SafetensorsWeights, name: string): Promise<Float64Array | null> {
  return w.has(name) ? load(w, name) : null;
}

/** y[T, out] = x[T, in] · W[out, in]^T + b */
export function linear(x: Mat, T: number, W: Float64Array, out: number, inn: number, b: Float64Array | null = null): Mat {
  const y = new Float64Array(T * out);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < out; o++) {
      let s = b ? b[o]! : 0;
      const wo = o * inn, xt = t * inn;
      for (let i = 0; i < inn; i++) s += x[xt + i]! * W[wo + i]!;
      y[t * out + o] = s;
    }
  }
  return y;
}

/** RMSNorm over consecutive groups of `n` values. */
export function rmsNorm(x: Mat, n: number, w: Float64Array, eps: number): Mat {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / n; r++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[r * n + i]! ** 2;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) y[r * n + i] = x[r * n + i]! * inv * w[i]!;
  }
  return y;
}

function invFreq(cfg: ModelConfig, T: number): Float64Array {
  const d = cfg.headDim, sc = cfg.ropeScaling;
  let base = cfg.ropeTheta;
  const type = sc?.rope_type ?? 'default';
  const factor = (sc?.factor as number | undefined) ?? 1;
  if (type === 'dynamic') {
    const orig = (sc?.original_max_position_embeddings as number | undefined) ?? (cfg.raw.max_position_embeddings as number);
    if (T > orig) base *= ((factor * T) / orig - (factor - 1)) ** (d / (d - 2));
  }
  const inv = Float64Array.from({ length: d / 2 }, (_, k) => 1 / base ** ((2 * k) / d));
  if (type === 'linear') return inv.map((v) => v / factor);
  if (type === 'llama3') {
    const old = sc!.original_max_position_embeddings!, lo = sc!.low_freq_factor!, hi = sc!.high_freq_factor!;
    return inv.map((v) => {
      const wl = (2 * Math.PI) / v;
      if (wl < old / hi) return v;
      if (wl > old / lo) return v / factor;
      const s = (old / wl - lo) / (hi - lo);
      return (1 - s) * (v / factor) + s * v;
    });
  }
  return inv;
}

/** In place: rotate-half RoPE on x laid out [T, heads, d]. */
function rope(x: Mat, T: number, heads: number, d: number, inv: Float64Array): void {
  const half = d / 2;
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < heads; h++) {
      const o = (t * heads + h) * d;
      for (let k = 0; k < half; k++) {
        const c = Math.cos(t * inv[k]!), s = Math.sin(t * inv[k]!);
        const a = x[o + k]!, b = x[o + k + half]!;
        x[o + k] = a * c - b * s;
        x[o + k + half] = b * c + a * s;
      }
    }
  }
}

export interface ReferenceOptions {
  /** Run without the attention term (the pad state). */
  noAttention?: boolean;
}

export async function referenceHiddenStates(modelDir: string, ids: number[], opts: ReferenceOptions = {}): Promise<Float64Array[]> {
  const cfg = await readModelConfig(modelDir);
  const w = await SafetensorsWeights.openFolder(modelDir);
  const H = cfg.hiddenSize, D = cfg.headDim, nH = cfg.numHeads, nKV = cfg.numKvHeads, I = cfg.intermediateSize;
  const T = ids.length, eps = cfg.rmsNormEps;
  const emb = await load(w, 'model.embed_tokens.weight');
  let h = new Float64Array(T * H);
  ids.forEach((id, t) => h.set(emb.subarray(id * H, (id + 1) * H), t * H));
  const out: Float64Array[] = [h];
  const inv = invFreq(cfg, T);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const x = rmsNorm(h, H, await load(w, p + 'input_layernorm.weight'), eps);
    const h1 = Float64Array.from(h);
    if (!opts.noAttention) {
      let q = linear(x, T, await load(w, p + 'self_attn.q_proj.weight'), nH * D, H, await loadOpt(w, p + 'self_attn.q_proj.bias'));
      let k = linear(x, T, await load(w, p + 'self_attn.k_proj.weight'), nKV * D, H, await loadOpt(w, p + 'self_attn.k_proj.bias'));
      const v = linear(x, T, await load(w, p + 'self_attn.v_proj.weight'), nKV * D, H, await loadOpt(w, p + 'self_attn.v_proj.bias'));
      const qn = await loadOpt(w, p + 'self_attn.q_norm.weight');
      const kn = await loadOpt(w, p + 'self_attn.k_norm.weight');
      if (qn) q = rmsNorm(q, D, qn, eps);
      if (kn) k = rmsNorm(k, D, kn, eps);
      rope(q, T, nH, D, inv);
      rope(k, T, nKV, D, inv);
      const ctx = new Float64Array(T * nH * D);
      const g = nH / nKV, win = cfg.slidingWindow;
      for (let hd = 0; hd < nH; hd++) {
        const kvh = Math.floor(hd / g);
        for (let i = 0; i < T; i++) {
          const scores: number[] = [];
          const js: number[] = [];
          for (let j = 0; j <= i; j++) {
            if (win !== null && !(i - win < j)) continue;
            let s = 0;
            for (let c = 0; c < D; c++) s += q[(i * nH + hd) * D + c]! * k[(j * nKV + kvh) * D + c]!;
            scores.push(s / Math.sqrt(D));
            js.push(j);
          }
          const m = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - m));
          const z = e.reduce((a, b) => a + b, 0);
          for (let n = 0; n < js.length; n++) {
            for (let c = 0; c < D; c++) ctx[(i * nH + hd) * D + c]! += (e[n]! / z) * v[(js[n]! * nKV + kvh) * D + c]!;
          }
        }
      }
      const o = linear(ctx, T, await load(w, p + 'self_attn.o_proj.weight'), H, nH * D, await loadOpt(w, p + 'self_attn.o_proj.bias'));
      for (let i = 0; i < h1.length; i++) h1[i]! += o[i]!;
    }
    const x2 = rmsNorm(h1, H, await load(w, p + 'post_attention_layernorm.weight'), eps);
    const gt = linear(x2, T, await load(w, p + 'mlp.gate_proj.weight'), I, H, null);
    const up = linear(x2, T, await load(w, p + 'mlp.up_proj.weight'), I, H, null);
    for (let i = 0; i < gt.length; i++) gt[i] = (gt[i]! / (1 + Math.exp(-gt[i]!))) * up[i]!;
    const down = linear(gt, T, await load(w, p + 'mlp.down_proj.weight'), H, I, null);
    h = h1;
    for (let i = 0; i < h.length; i++) h[i]! += down[i]!;
    out.push(h);
  }
  out[cfg.numLayers] = rmsNorm(h, H, await load(w, 'model.norm.weight'), eps);
  return out;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}
