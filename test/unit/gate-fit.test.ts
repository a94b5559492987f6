/** gate_mode fit's maths (libs/gates/fit.ts) on cases with a known answer. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { calibrateScale, choleskySolve, fitLayer, ridge, targetsAndWeights, type FitSample } from '../../libs/gates/fit';
import { Rng } from '../../libs/gates';

const close = (a: number, b: number, tol: number, what: string) => assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);

test('Cholesky solve: a 3 x 3 system with a known solution', () => {
  const a = Float64Array.from([4, 2, 0, 2, 5, 1, 0, 1, 3]);
  const x = Float64Array.from([1, -2, 0.5, 3, 2, -1]); // 3 x 2
  const b = new Float64Array(6);
  for (let i = 0; i < 3; i++) for (let c = 0; c < 2; c++) for (let k = 0; k < 3; k++) b[i * 2 + c]! += a[i * 3 + k]! * x[k * 2 + c]!;
  const got = choleskySolve(a, 3, b, 2);
  x.forEach((v, i) => close(got[i]!, v, 1e-12, `x[${i}]`));
  assert.throws(() => choleskySolve(Float64Array.from([1, 2, 2, 1]), 2, Float64Array.from([1, 1]), 1), /not positive definite/);
});

test('ridge on orthonormal tokens: W = Y / (1 + λ·N/H) at each token\'s coordinate (the dual form)', () => {
  const H = 8, E = 3;
  // Token i is the unit vector e_i; its target one-hot at expert i % 3.
  const samples: FitSample[] = [0, 1, 2, 3].map((i) => {
    const tokens = new Float32Array(H);
    tokens[i] = 1;
    const target = new Float64Array(E);
    target[i % E] = 1;
    return { tokens, target, weight: 1 };
  });
  const { w, form } = ridge(samples, H, E, 0.5);
  assert.equal(form, 'dual');
  const shrink = 1 / (1 + (0.5 * 4) / H);
  for (let h = 0; h < H; h++) for (let e = 0; e < E; e++) close(w[h * E + e]!, h < 4 && e === h % E ? shrink : 0, 1e-12, `w[${h}][${e}]`);
});

test('primal and dual forms give the same ridge solution', () => {
  const rng = new Rng(3, 'fit-test');
  const H = 6, E = 2;
  const make = (n: number) =>
    Array.from({ length: n }, (_, i) => ({ tokens: Float32Array.from({ length: 3 * H }, () => rng.normal()), target: Float64Array.from([i % 2, 1 - (i % 2)]), weight: 1 + (i % 3) }));
  // 4 prompts of 3 tokens: 12 tokens > H, the primal system; the same rows split as 12 one-token prompts in 2
  // batches of 6 <= H each would be dual, so compare against a dual solve of the same data directly.
  const samples = make(4);
  const primal = ridge(samples, H, E, 0.3);
  assert.equal(primal.form, 'primal');
  // Dual by hand: W = Xᵀ (XXᵀ + λ'I)⁻¹ Y over the 12 weighted rows.
  const rows: number[][] = [], ys: number[][] = [];
  let energy = 0;
  for (const s of samples) for (let t = 0; t < 3; t++) {
    const r = [...s.tokens.subarray(t * H, (t + 1) * H)].map((v) => v * Math.sqrt(s.weight));
    energy += r.reduce((a, v) => a + v * v, 0);
    rows.push(r);
    ys.push([...s.target].map((v) => v * Math.sqrt(s.weight)));
  }
  const N = rows.length, reg = (0.3 * energy) / H;
  const k = new Float64Array(N * N);
  for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) k[i * N + j] = rows[i]!.reduce((a, v, h) => a + v * rows[j]![h]!, 0) + (i === j ? reg : 0);
  const alpha = choleskySolve(k, N, Float64Array.from(ys.flat()), E);
  for (let h = 0; h < H; h++) for (let e = 0; e < E; e++) {
    const want = rows.reduce((a, r, i) => a + r[h]! * alpha[i * E + e]!, 0);
    close(primal.w[h * E + e]!, want, 1e-9, `w[${h}][${e}]`);
  }
});

test('the scale makes the mean top-1 probability the asked confidence: logits (1, 0) give s = ln(c / (1 − c))', () => {
  const logits = Float64Array.from([1, 0, 0, 1, 1, 0]);
  const weights = Float64Array.from([1, 1, 1]);
  for (const c of [0.6, 0.75, 0.9]) close(calibrateScale(logits, weights, 2, c), Math.log(c / (1 - c)), 1e-9, `c ${c}`);
});

test('weights: each expert\'s prompts weigh the same in total, mean token weight 1; negatives push their expert down', () => {
  const tw = targetsAndWeights(
    [
      { tokens: 10, positive: [0], negative: [] },
      { tokens: 20, positive: [1], negative: [] },
      { tokens: 10, positive: [1], negative: [] },
    ],
    2,
  );
  close(tw[0]!.weight * 10, tw[1]!.weight * 20 + tw[2]!.weight * 10, 1e-12, 'expert 0 vs expert 1 total');
  close(tw[0]!.weight * 10 + tw[1]!.weight * 20 + tw[2]!.weight * 10, 40, 1e-12, 'mean weight 1');
  const neg = targetsAndWeights([{ tokens: 5, positive: [1], negative: [0] }, { tokens: 5, positive: [0], negative: [] }], 2);
  assert.deepEqual([...neg[0]!.target], [-1, 1]);
  assert.deepEqual([...neg[1]!.target], [1, 0]);
});

test('fitLayer separates two clusters, routes every training token to its own expert, and hits the confidence', () => {
  const rng = new Rng(11, 'fit-clusters');
  const H = 16, E = 3;
  const centers = Array.from({ length: E }, () => Float64Array.from({ length: H }, () => rng.normal()));
  const samples: FitSample[] = [];
  for (let e = 0; e < E; e++) for (let p = 0; p < 4; p++) {
    const T = 5;
    const tokens = Float32Array.from({ length: T * H }, (_, i) => centers[e]![i % H]! + 0.3 * rng.normal());
    const target = new Float64Array(E);
    target[e] = 1;
    samples.push({ tokens, target, weight: 1 });
  }
  const fit = fitLayer(samples, H, E, { lambda: 0.1, confidence: 0.7 });
  assert.equal(fit.trainTop1, 1);
  let mean = 0, n = 0;
  for (const s of samples) for (let t = 0; t < 5; t++) {
    const z = Array.from({ length: E }, (_, e) => fit.rows.subarray(e * H, (e + 1) * H).reduce((a, w, h) => a + w * s.tokens[t * H + h]!, 0));
    const m = Math.max(...z), p = z.map((v) => Math.exp(v - m)), sum = p.reduce((a, b) => a + b, 0);
    mean += Math.max(...p) / sum;
    n++;
  }
  close(mean / n, 0.7, 1e-6, 'mean top-1 probability');
});
