import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng, randomGates, uniformRandomGates, conditionNumber, degenerateLayers, newGates, gateRow, hiddenVector, hiddenRows, useGatesWasm, type PromptStates } from '../../libs/gates';
import { hiddenRowsWasm, layerGramsWasm } from '../../libs/gates/gates-wasm';

test('the seeded generator is deterministic per (seed, stream) and streams differ', () => {
  const a = new Rng(7, 's');
  const b = new Rng(7, 's');
  const c = new Rng(7, 't');
  const xs = Array.from({ length: 5 }, () => a.nextU32());
  assert.deepEqual(xs, Array.from({ length: 5 }, () => b.nextU32()));
  assert.notDeepEqual(xs, Array.from({ length: 5 }, () => c.nextU32()));
  // Pinned values: a change to the generator would silently change every seeded output.
  assert.deepEqual(Array.from(randomGates(1, 1, 4, 42).data), [-0.0937347337603569, -1.3524298667907715, 0.06524568796157837, 3.3608922958374023]);
});

test('random gates are standard normal, uniform_random within ±1/sqrt(H)', () => {
  const g = randomGates(4, 8, 256, 1);
  const n = g.data.length;
  const mean = g.data.reduce((s, x) => s + x, 0) / n;
  const variance = g.data.reduce((s, x) => s + (x - mean) ** 2, 0) / n;
  assert.ok(Math.abs(mean) < 0.05, `mean ${mean}`);
  assert.ok(Math.abs(variance - 1) < 0.05, `variance ${variance}`);
  const u = uniformRandomGates(4, 8, 256, 1);
  const s = 1 / Math.sqrt(256);
  assert.ok(u.data.every((x) => x >= -s && x < s));
  const umean = u.data.reduce((a, x) => a + x, 0) / u.data.length;
  const uvar = u.data.reduce((a, x) => a + x * x, 0) / u.data.length;
  assert.ok(Math.abs(umean) < 0.005 && Math.abs(uvar - (s * s) / 3) < 0.0005, `uniform stats ${umean} ${uvar}`);
  assert.notDeepEqual(randomGates(1, 2, 8, 1).data, randomGates(1, 2, 8, 2).data);
});

test('condition number and the degenerate-routing warning text', () => {
  assert.ok(Math.abs(conditionNumber([[1, 0, 0], [0, 2, 0]]) - 2) < 1e-9);
  assert.equal(conditionNumber([[1, 1], [1, 1]]), Infinity);
  const g = newGates(3, 2, 4);
  for (let l = 0; l < 3; l++) {
    gateRow(g, l, 0).set([1, 0, 0, 0]);
    gateRow(g, l, 1).set(l === 1 ? [0, 1, 0, 0] : [1, 0.01, 0, 0]);
  }
  const d = degenerateLayers(g);
  assert.deepEqual(d.flagged, [0, 2]);
  assert.equal(d.warning, 'layers 0 and 2 have degenerate routing parameters - your prompts may be too similar. One or more experts will be underutilized in your model.');
  gateRow(g, 1, 1).set([1, 0, 0, 0]);
  assert.match(degenerateLayers(g).warning!, /^ALL layers have degenerate/);
});

test("hidden_avg reproduces the reference's padded mean from per-prompt sums and the pad state", () => {
  const H = 2;
  const pad = [new Float32Array([10, 20])];
  // Prompt A: 3 tokens summing to (3, 3); prompt B: 1 token (1, -1). Padded to T = 3.
  const a = { last: [new Float32Array([1, 1])], sum: [new Float32Array([3, 3])], count: 3 };
  const b = { last: [new Float32Array([1, -1])], sum: [new Float32Array([1, -1])], count: 1 };
  const v = hiddenVector([a, b], [], pad, 0, 'avg', H);
  const meanA = [3 / 3, 3 / 3];
  const meanB = [(1 + 2 * 10) / 3, (-1 + 2 * 20) / 3];
  const raw = [(meanA[0]! + meanB[0]!) / 2, (meanA[1]! + meanB[1]!) / 2];
  const norm = Math.hypot(raw[0]!, raw[1]!);
  assert.ok(Math.abs(v[0]! - raw[0]! / norm) < 1e-12 && Math.abs(v[1]! - raw[1]! / norm) < 1e-12);
  const last = hiddenVector([a, b], [b], null, 0, 'last', H);
  // mean of last tokens (1, 0) minus the negative's (1, -1) = (0, 1)
  assert.ok(Math.abs(last[0]!) < 1e-12 && Math.abs(last[1]! - 1) < 1e-12);
});

for (const wasm of [true, false]) test(`hiddenRows (${wasm ? 'WebAssembly' : 'JavaScript'}) gives every layer the bits hiddenVector gives it (last and avg, with and without negatives), and degenerateLayers the condition numbers of each layer's rows`, () => {
  useGatesWasm(wasm);
  // The WebAssembly loops run here (not a silent fallback), or are off.
  assert.equal(hiddenRowsWasm([], [], null, [], 0, 0, 1, 0, new Float32Array(0), 0, 0), wasm);
  assert.equal(layerGramsWasm(new Float32Array(2), 1, 1, 2) !== null, wasm);
  const rng = new Rng(7, 'test/hidden-rows');
  const L = 5, H = 37;
  const floats = () => Float32Array.from({ length: H }, () => rng.normal() * 3);
  const prompt = (count: number): PromptStates => ({ last: Array.from({ length: L }, floats), sum: Array.from({ length: L }, floats), count });
  const pos = [prompt(4), prompt(9), prompt(1)];
  const neg = [prompt(6), prompt(2)];
  const pad = Array.from({ length: L }, floats);
  for (const reduction of ['last', 'avg'] as const) {
    for (const negative of [[], neg]) {
      const g = newGates(L, 3, H);
      hiddenRows(pos, negative, pad, reduction, H, L, g.data, H, 3 * H);
      for (let l = 0; l < L; l++) {
        const want = Float32Array.from(hiddenVector(pos, negative, pad, l, reduction, H));
        assert.deepEqual(gateRow(g, l, 1), want, `${reduction}, ${negative.length} negatives, layer ${l}`);
        assert.ok(gateRow(g, l, 0).every((x) => x === 0) && gateRow(g, l, 2).every((x) => x === 0), 'other rows untouched');
      }
    }
  }
  const g = randomGates(L, 3, H, 11);
  const { conditionNumbers } = degenerateLayers(g);
  assert.deepEqual(conditionNumbers, Array.from({ length: L }, (_, l) => conditionNumber([0, 1, 2].map((e) => gateRow(g, l, e)))));
  useGatesWasm(true);
});
