import { Rng } from './rng';
import { TorchGenerator } from './torch-rng';
import { conditionFromGram, conditionNumber } from './linalg';
import { hiddenRowsWasm, layerGramsWasm } from './gates-wasm';
export { useGatesWasm } from './gates-wasm';
import type { HiddenReduction, RandomDraw } from './modes';

export { Rng } from './rng';
export { conditionNumber, singularValues } from './linalg';
export { calibrateScale, choleskySolve, fitLayer, FIT_DEFAULTS, ridge, targetsAndWeights, type FitOptions, type FitSample, type LayerFit } from './fit';
export type { HiddenReduction, RandomDraw } from './modes';

/** Gate vectors G of shape [layers, experts, hidden], row-major float32. */
export interface GateTensor {
  layers: number;
  experts: number;
  hidden: number;
  data: Float32Array;
}

export function newGates(layers: number, experts: number, hidden: number): GateTensor {
  return { layers, experts, hidden, data: new Float32Array(layers * experts * hidden) };
}

export function gateRow(g: GateTensor, layer: number, expert: number): Float32Array {
  const o = (layer * g.experts + expert) * g.hidden;
  return g.data.subarray(o, o + g.hidden);
}

/** `random`: i.i.d. standard normal, not normalised. Our own seeded stream. */
export function randomGates(layers: number, experts: number, hidden: number, seed: number): GateTensor {
  const g = newGates(layers, experts, hidden);
  const rng = new Rng(seed, 'gates/random');
  for (let i = 0; i < g.data.length; i++) g.data[i] = rng.normal();
  return g;
}

/** `uniform_random`: uniform on [-1/sqrt(H), 1/sqrt(H)) like nn.Linear's default init. */
export function uniformRandomGates(layers: number, experts: number, hidden: number, seed: number): GateTensor {
  const g = newGates(layers, experts, hidden);
  const rng = new Rng(seed, 'gates/uniform_random');
  const s = Math.fround(Math.sqrt(1 / hidden));
  for (let i = 0; i < g.data.length; i++) g.data[i] = Math.fround(Math.fround(rng.uniform()) * 2 * s - s);
  return g;
}

/**
 * The reference's `random` / `uniform_random` routers with PyTorch's generator after `manual_seed(seed)`:
 * `randn(L, N, H)`, or `rand(L, N, H) * 2 * s - s` with s = sqrt(1/H), each operation in
 * float32 as torch does it (the Python scalar cast to float32).
 */
export function torchRandomGates(draw: RandomDraw, layers: number, experts: number, hidden: number, gen: TorchGenerator): GateTensor {
  const n = layers * experts * hidden;
  if (draw === 'randn') return { layers, experts, hidden, data: gen.randn(n, 'F32') };
  const u = gen.rand(n, 'F32');
  const s = Math.fround(Math.sqrt(1 / hidden));
  for (let i = 0; i < n; i++) u[i] = Math.fround(Math.fround(u[i]! * 2 * s) - s);
  return { layers, experts, hidden, data: u };
}

/** A random mode's gates from the seed: our own streams, or PyTorch's generator (`rng: torch`). */
export function drawnGates(draw: RandomDraw, layers: number, experts: number, hidden: number, seed: number, rng: 'stream' | 'torch'): GateTensor {
  if (rng === 'torch') return torchRandomGates(draw, layers, experts, hidden, new TorchGenerator(seed));
  return draw === 'randn' ? randomGates(layers, experts, hidden, seed) : uniformRandomGates(layers, experts, hidden, seed);
}

/** v / max(|v|, 1e-8), in float64. */
export function normalize(v: Float64Array): Float64Array {
  let n = 0;
  for (let i = 0; i < v.length; i++) n += v[i]! * v[i]!;
  const d = Math.max(Math.sqrt(n), 1e-8);
  const out = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = v[i]! / d;
  return out;
}

/** One prompt's states per layer input (layer 0 = embeddings): last token, sum over tokens, token count. */
export interface PromptStates {
  last: Float32Array[];
  sum: Float32Array[];
  count: number;
}

/** One prompt's own state per layer under a reduction (the routing report's): its last token's, or its tokens' mean. */
export function promptState(s: PromptStates, reduction: HiddenReduction): Float32Array[] {
  return reduction === 'avg' ? s.sum.map((v) => v.map((x) => x / s.count)) : s.last;
}

/**
 * The per-layer vector of a prompt batch: the plain mean over prompts of each prompt's last
 * token, or (avg) of the reference's padded mean (sum + (T − n)·pad) / T, T being the batch's longest prompt.
 */
export function batchVector(states: PromptStates[], padStates: Float32Array[] | null, layer: number, reduction: HiddenReduction, hidden: number): Float64Array {
  const out = new Float64Array(hidden);
  const T = Math.max(...states.map((s) => s.count));
  for (const s of states) {
    if (reduction === 'last') {
      const v = s.last[layer]!;
      for (let k = 0; k < hidden; k++) out[k] += v[k]!;
    } else {
      const sum = s.sum[layer]!;
      const pad = padStates![layer]!;
      const padCount = T - s.count;
      for (let k = 0; k < hidden; k++) out[k] += (sum[k]! + padCount * pad[k]!) / T;
    }
  }
  for (let k = 0; k < hidden; k++) out[k] /= states.length;
  return out;
}

/** Hidden-mode gate vector of one expert for one layer: normalize(f(pos) − f(neg)). */
export function hiddenVector(
  positive: PromptStates[],
  negative: PromptStates[],
  padStates: Float32Array[] | null,
  layer: number,
  reduction: HiddenReduction,
  hidden: number,
): Float64Array {
  const v = batchVector(positive, padStates, layer, reduction, hidden);
  if (negative.length > 0) {
    const n = batchVector(negative, padStates, layer, reduction, hidden);
    for (let k = 0; k < hidden; k++) v[k] -= n[k]!;
  }
  return normalize(v);
}

/**
 * hiddenVector for every layer of one expert, layer l's row written (rounded to float32) at
 * `data[first + l * stride ..]`: in WebAssembly where it runs (gates-wasm.ts, the same operations in the same order,
 * so the same bits). Run once per command, the per-layer JavaScript spent ~40 ms of a one-prompt edit's tail in code
 * its optimising compiler had not reached yet.
 */
export function hiddenRows(positive: PromptStates[], negative: PromptStates[], padStates: Float32Array[] | null, reduction: HiddenReduction, hidden: number, layers: number, data: Float32Array, first: number, stride: number): void {
  if (reduction === 'last' || padStates) {
    const longest = (states: PromptStates[]) => Math.max(...states.map((s) => s.count));
    const tPos = longest(positive), tNeg = longest(negative);
    const of = (s: PromptStates) => (reduction === 'last' ? s.last : s.sum);
    const padCounts = [...positive.map((s) => tPos - s.count), ...negative.map((s) => tNeg - s.count)];
    if (hiddenRowsWasm(positive.map(of), negative.map(of), reduction === 'avg' ? padStates : null, padCounts, tPos, tNeg, hidden, layers, data, first, stride)) return;
  }
  for (let l = 0; l < layers; l++) data.set(hiddenVector(positive, negative, padStates, l, reduction, hidden), first + l * stride);
}

/** Layers whose gate matrix has a condition number over 5, and the reference's warning text. */
export function degenerateLayers(g: GateTensor, threshold = 5): { conditionNumbers: number[]; flagged: number[]; warning: string | null } {
  const conditionNumbers: number[] = [];
  const flagged: number[] = [];
  const grams = layerGramsWasm(g.data, g.layers, g.experts, g.hidden);
  for (let l = 0; l < g.layers; l++) {
    const c = grams ? conditionFromGram(grams[l]!) : conditionNumber(Array.from({ length: g.experts }, (_, e) => gateRow(g, l, e)));
    conditionNumbers.push(c);
    if (c > threshold) flagged.push(l);
  }
  if (flagged.length === 0) return { conditionNumbers, flagged, warning: null };
  let which: string;
  if (flagged.length === g.layers && flagged.length > 2) which = 'ALL layers';
  else if (flagged.length === 1) which = `layer ${flagged[0]}`;
  else if (flagged.length === 2) which = `layers ${flagged[0]} and ${flagged[1]}`;
  else which = `layers ${flagged.slice(0, -1).join(', ')}, and ${flagged[flagged.length - 1]}`;
  const verb = flagged.length === 1 ? 'has' : 'have';
  return {
    conditionNumbers,
    flagged,
    warning: `${which} ${verb} degenerate routing parameters - your prompts may be too similar. One or more experts will be underutilized in your model.`,
  };
}
export * from './modes';
export * from './rng';
export * from './torch-normal-wasm';
export * from './torch-rng';
export { normalsNative, setNoiseKernel, NATIVE_KERNELS, type NormalsNative } from './normals-native';
