/**
 * The dense layer graph's optional router input (gate_mode fit's states): the post-attention RMSNorm output of each
 * layer, checked against the layer's own algebra, and the MLPs of another model behind the base's attention.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { SafetensorsWeights, decodeFloats, readTensorBytes } from '../../libs/safetensors';
import { computeAllHiddenStates, computeRouterInputs } from '../../libs/forward';
import { FIXTURES } from '../helpers/forward-fixtures';
import { maxAbsDiff } from '../helpers/forward-reference';

const TINY = (n: string) => join(FIXTURES, 'tiny-llama', `tiny-${n}`);
const H = 64, I = 128;
const IDS = [[0, 17, 88, 301, 5, 9, 44], [0, 3, 3]];

async function tensor(dir: string, name: string): Promise<Float32Array> {
  const w = await SafetensorsWeights.openFolder(dir);
  return decodeFloats(await readTensorBytes(w.get(name)), 'F32');
}

/** x [T, in] times w [out, in]ᵀ. */
function linear(x: Float64Array, w: Float32Array, T: number, inDim: number, outDim: number): Float64Array {
  const y = new Float64Array(T * outDim);
  for (let t = 0; t < T; t++) for (let o = 0; o < outDim; o++) {
    let s = 0;
    for (let k = 0; k < inDim; k++) s += x[t * inDim + k]! * w[o * inDim + k]!;
    y[t * outDim + o] = s;
  }
  return y;
}

test("router input r of layer 0 satisfies the layer: h1 − down(silu(gate r) · up r) is the attention output h', and r = RMSNorm(h') · post_attention_layernorm", async () => {
  const routerIn = await computeRouterInputs(TINY('a'), IDS);
  const hidden = await computeAllHiddenStates(TINY('a'), IDS);
  const p = 'model.layers.0.';
  const [gate, up, down, ln2] = await Promise.all(['mlp.gate_proj.weight', 'mlp.up_proj.weight', 'mlp.down_proj.weight', 'post_attention_layernorm.weight'].map((n) => tensor(TINY('a'), p + n)));
  for (const [i, ids] of IDS.entries()) {
    const T = ids.length;
    assert.equal(routerIn[i]!.length, 2, 'one entry per layer');
    const r = Float64Array.from(routerIn[i]![0]!);
    assert.equal(r.length, T * H);
    const g = linear(r, gate!, T, H, I), u = linear(r, up!, T, H, I);
    const act = g.map((v, k) => (v / (1 + Math.exp(-v))) * u[k]!);
    const mlp = linear(act, down!, T, I, H);
    const h1 = hidden[i]![1]!.map((v, k) => v - mlp[k]!);
    const want = new Float32Array(T * H);
    for (let t = 0; t < T; t++) {
      let ss = 0;
      for (let k = 0; k < H; k++) ss += h1[t * H + k]! ** 2;
      const inv = 1 / Math.sqrt(ss / H + 1e-5);
      for (let k = 0; k < H; k++) want[t * H + k] = h1[t * H + k]! * inv * ln2![k]!;
    }
    assert.ok(maxAbsDiff(routerIn[i]![0]!, want) < 1e-4, `prompt ${i}: ${maxAbsDiff(routerIn[i]![0]!, want)}`);
  }
});

test("mlpFrom: another model's MLPs behind the base's attention: layer 0's router input is the base's, layer 1's is not", async () => {
  const base = await computeRouterInputs(TINY('a'), IDS);
  const hybrid = await computeRouterInputs(TINY('a'), IDS, { mlpFrom: TINY('b') });
  assert.deepEqual(hybrid[0]![0], base[0]![0]);
  assert.ok(maxAbsDiff(hybrid[0]![1]!, base[0]![1]!) > 1e-3);
  // Nor is it tiny-b's own: its attention and norms differ.
  const other = await computeRouterInputs(TINY('b'), IDS);
  assert.ok(maxAbsDiff(hybrid[0]![0]!, other[0]![0]!) > 1e-3);
});
