/**
 * `gate_mode: fit`: each layer's router fitted to every token of the prompts, on the router's own input (the
 * post-attention RMSNorm output of that layer). A weighted ridge regression of per-token targets (+1 for the
 * experts that list the prompt as positive, −1 for those that list it as negative, 0 elsewhere) on the tokens'
 * router inputs, solved in closed form, then one scale per layer so that the routers are confident but not
 * saturated. Everything here is float64; the statistics are sums over tokens, so they add up per prompt.
 */

/** One prompt's tokens at one layer: T rows of H router inputs, its per-expert target, its weight per token. */
export interface FitSample {
  tokens: Float32Array;
  target: Float64Array;
  weight: number;
}

export interface FitOptions {
  /** Ridge strength relative to the mean squared norm of a token's router input (scale-free). */
  lambda: number;
  /** Mean top-1 softmax probability over the training tokens that the scale is set to; in (1/E, 1). */
  confidence: number;
}

export const FIT_DEFAULTS: FitOptions = { lambda: 0.1, confidence: 0.6 };

export interface LayerFit {
  /** Router rows, [E, H] row-major: the logits of a token x are rows · x. */
  rows: Float64Array;
  /** The calibrated scale applied to the ridge solution. */
  scale: number;
  /** Weighted share of training tokens whose top-1 expert is one their prompt lists positive (training fit). */
  trainTop1: number;
  /** Whether the primal (H x H) or the dual (tokens x tokens) system was solved. */
  form: 'primal' | 'dual';
}

/** Solves (A) X = B in place for a symmetric positive definite n x n A (row-major) and n x m B, by Cholesky. */
export function choleskySolve(a: Float64Array, n: number, b: Float64Array, m: number): Float64Array {
  const l = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = a[i * n + j]!;
      const ri = i * n, rj = j * n;
      for (let k = 0; k < j; k++) s -= l[ri + k]! * l[rj + k]!;
      if (i === j) {
        if (!(s > 0)) throw new RangeError(`matrix not positive definite at row ${i}`);
        l[ri + i] = Math.sqrt(s);
      } else l[ri + j] = s / l[rj + j]!;
    }
  }
  const x = Float64Array.from(b);
  for (let c = 0; c < m; c++) {
    for (let i = 0; i < n; i++) {
      let s = x[i * m + c]!;
      for (let k = 0; k < i; k++) s -= l[i * n + k]! * x[k * m + c]!;
      x[i * m + c] = s / l[i * n + i]!;
    }
    for (let i = n - 1; i >= 0; i--) {
      let s = x[i * m + c]!;
      for (let k = i + 1; k < n; k++) s -= l[k * n + i]! * x[k * m + c]!;
      x[i * m + c] = s / l[i * n + i]!;
    }
  }
  return x;
}

function dot(a: Float64Array, ao: number, b: Float64Array, bo: number, n: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, k = 0;
  for (; k + 3 < n; k += 4) {
    s0 += a[ao + k]! * b[bo + k]!;
    s1 += a[ao + k + 1]! * b[bo + k + 1]!;
    s2 += a[ao + k + 2]! * b[bo + k + 2]!;
    s3 += a[ao + k + 3]! * b[bo + k + 3]!;
  }
  for (; k < n; k++) s0 += a[ao + k]! * b[bo + k]!;
  return s0 + s1 + s2 + s3;
}

/**
 * The ridge solution W [H, E] of min Σ_t w_t |x_tᵀW − y_t|² + λ' |W|², λ' = λ · (Σ_t w_t |x_t|²) / H, by whichever
 * system is smaller: (XᵀX + λ'I) W = XᵀY (H x H) or W = Xᵀ (XXᵀ + λ'I)⁻¹ Y (tokens x tokens); both give the same W.
 */
export function ridge(samples: FitSample[], hidden: number, experts: number, lambda: number): { w: Float64Array; form: 'primal' | 'dual' } {
  const H = hidden, E = experts;
  const N = samples.reduce((a, s) => a + s.tokens.length / H, 0);
  // Rows scaled by sqrt(weight): the weighted problem becomes a plain one.
  const x = new Float64Array(N * H);
  const y = new Float64Array(N * E);
  let r = 0, energy = 0;
  for (const s of samples) {
    const sw = Math.sqrt(s.weight);
    for (let t = 0; t < s.tokens.length / H; t++, r++) {
      for (let k = 0; k < H; k++) {
        const v = s.tokens[t * H + k]! * sw;
        x[r * H + k] = v;
        energy += v * v;
      }
      for (let e = 0; e < E; e++) y[r * E + e] = s.target[e]! * sw;
    }
  }
  const reg = Math.max((lambda * energy) / H, 1e-12);
  if (N <= H) {
    const k = new Float64Array(N * N);
    for (let i = 0; i < N; i++) {
      for (let j = 0; j <= i; j++) k[i * N + j] = k[j * N + i] = dot(x, i * H, x, j * H, H);
      k[i * N + i]! += reg;
    }
    const a = choleskySolve(k, N, y, E);
    const w = new Float64Array(H * E);
    for (let i = 0; i < N; i++) for (let h = 0; h < H; h++) {
      const xv = x[i * H + h]!;
      if (xv !== 0) for (let e = 0; e < E; e++) w[h * E + e]! += xv * a[i * E + e]!;
    }
    return { w, form: 'dual' };
  }
  // Primal: XᵀX accumulated row by row (the sum over tokens), then XᵀY.
  const c = new Float64Array(H * H);
  const xty = new Float64Array(H * E);
  for (let i = 0; i < N; i++) {
    const o = i * H;
    for (let p = 0; p < H; p++) {
      const xp = x[o + p]!;
      if (xp === 0) continue;
      for (let q = 0; q <= p; q++) c[p * H + q]! += xp * x[o + q]!;
      for (let e = 0; e < E; e++) xty[p * E + e]! += xp * y[i * E + e]!;
    }
  }
  for (let p = 0; p < H; p++) {
    for (let q = 0; q < p; q++) c[q * H + p] = c[p * H + q]!;
    c[p * H + p]! += reg;
  }
  return { w: choleskySolve(c, H, xty, E), form: 'primal' };
}

/** Mean over tokens (weighted) of the top-1 softmax probability of s · logits. */
function meanTop1(logits: Float64Array, weights: Float64Array, E: number, s: number): number {
  let acc = 0, total = 0;
  for (let t = 0; t < weights.length; t++) {
    let max = -Infinity;
    for (let e = 0; e < E; e++) max = Math.max(max, logits[t * E + e]!);
    let z = 0;
    for (let e = 0; e < E; e++) z += Math.exp(s * (logits[t * E + e]! - max));
    acc += weights[t]! / z;
    total += weights[t]!;
  }
  return acc / total;
}

/**
 * The scale s at which the mean top-1 probability of softmax(s · logits) over the training tokens is `confidence`
 * (it rises with s from 1/E toward 1): the top-k choice does not depend on s, the mixing weights do.
 */
export function calibrateScale(logits: Float64Array, weights: Float64Array, E: number, confidence: number): number {
  let lo = 0, hi = 1;
  for (let i = 0; i < 200 && meanTop1(logits, weights, E, hi) < confidence; i++) hi *= 2;
  if (meanTop1(logits, weights, E, hi) < confidence) return hi; // ties everywhere: as confident as it gets
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if (meanTop1(logits, weights, E, mid) < confidence) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** One layer's router: the ridge fit, transposed to rows, scaled by the calibration. */
export function fitLayer(samples: FitSample[], hidden: number, experts: number, opts: FitOptions): LayerFit {
  const H = hidden, E = experts;
  const { w, form } = ridge(samples, H, E, opts.lambda);
  const N = samples.reduce((a, s) => a + s.tokens.length / H, 0);
  const logits = new Float64Array(N * E);
  const weights = new Float64Array(N);
  let r = 0, hit = 0, total = 0;
  for (const s of samples) {
    for (let t = 0; t < s.tokens.length / H; t++, r++) {
      weights[r] = s.weight;
      for (let h = 0; h < H; h++) {
        const xv = s.tokens[t * H + h]!;
        for (let e = 0; e < E; e++) logits[r * E + e]! += xv * w[h * E + e]!;
      }
      let best = 0;
      for (let e = 1; e < E; e++) if (logits[r * E + e]! > logits[r * E + best]!) best = e;
      if (s.target.some((v) => v > 0)) {
        total += s.weight;
        if (s.target[best]! > 0) hit += s.weight;
      }
    }
  }
  const scale = calibrateScale(logits, weights, E, opts.confidence);
  const rows = new Float64Array(E * H);
  for (let e = 0; e < E; e++) for (let h = 0; h < H; h++) rows[e * H + h] = scale * w[h * E + e]!;
  return { rows, scale, trainTop1: total > 0 ? hit / total : 0, form };
}

/**
 * Per text: its target (+1 per expert listing it positive, −1 per expert listing it negative) and its weight per
 * token, so that every expert's prompts weigh the same in total whatever their lengths and counts.
 */
export function targetsAndWeights(texts: { tokens: number; positive: number[]; negative: number[] }[], experts: number): { target: Float64Array; weight: number }[] {
  const perExpert = new Float64Array(experts);
  for (const t of texts) for (const e of [...t.positive, ...t.negative]) perExpert[e]! += t.tokens;
  const raw = texts.map((t) => {
    const target = new Float64Array(experts);
    for (const e of t.positive) target[e]! += 1;
    for (const e of t.negative) target[e]! -= 1;
    const labels = [...t.positive, ...t.negative];
    const weight = labels.length === 0 ? 0 : labels.reduce((a, e) => a + 1 / perExpert[e]!, 0) / labels.length;
    return { target, weight };
  });
  // Mean weight per token 1: λ stays relative to a typical token.
  const tokens = texts.reduce((a, t) => a + t.tokens, 0);
  const mass = raw.reduce((a, r, i) => a + r.weight * texts[i]!.tokens, 0);
  return raw.map((r) => ({ target: r.target, weight: mass > 0 ? (r.weight * tokens) / mass : 0 }));
}
