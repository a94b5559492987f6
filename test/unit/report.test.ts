/** The report's pure functions on hand-made gates and states: each cause of starvation, shared gates, ranges. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildReport, layerRanges, measureRouting, rangesOf, type ReportExpert, type ReportInput, type ReportPrompt } from '../../libs/report';
import { routingSection } from '../../libs/model-card/routing';

const H = 4;

function input(rows: number[][][], prompts: ReportPrompt[], states: Record<string, number[]>, extra: Partial<ReportInput> = {}): ReportInput {
  const L = rows.length;
  const N = rows[0]!.length;
  const data = new Float32Array(L * N * H);
  rows.forEach((layer, l) => layer.forEach((r, e) => data.set(r, (l * N + e) * H)));
  const experts: ReportExpert[] = Array.from({ length: N }, (_, i) => ({ index: i, label: `expert ${i}`, model: `m${i}`, shared: false }));
  const gates = { layers: L, experts: N, hidden: H, data };
  // Each text as one token whose router input is its state: the merged model's logits are the rows times it.
  const logits = new Map(Object.entries(states).map(([k, v]) => [k, rows.map((layer) => Float32Array.from(layer, (r) => r.reduce((a, x, j) => a + x * v[j]!, 0)))]));
  return {
    name: 't',
    gateMode: 'hidden',
    topK: 1,
    state: 'last',
    gates: { layers: L, experts: N, hidden: H, data },
    experts,
    prompts,
    states: new Map(Object.entries(states).map(([k, v]) => [k, [Float32Array.from(v)]])),
    randomGates: false,
    warnings: [],
    measured: measureRouting({ prompts, routed: N, topK: 1, gates, logits, layers: L }),
    ...extra,
  };
}
const pos = (text: string, expert: number): ReportPrompt => ({ text, set: 'train', role: 'positive', expert });

test('an expert whose prompts another expert wins starves, and the winner is named', () => {
  // Expert 1's prompt points along expert 0's row more than its own.
  const r = buildReport(input([[[4, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]], [pos('a', 0), pos('b', 1), pos('c', 2)], { a: [1, 0, 0, 0], b: [1, 0.5, 0, 0], c: [0, 0, 1, 0] }));
  assert.deepEqual(r.perLayer[0]!.starving, [1]);
  assert.deepEqual(r.perLayer[0]!.reasons['1']!.map((x) => [x.kind, x.partner]), [['outvoted', 0]]);
  assert.equal(r.perLayer[0]!.accuracy, 2 / 3);
  assert.deepEqual(r.perLayer[0]!.wins, [2, 0, 1]);
  assert.match(r.summary.starving[0]!.reasons[0]!, /its positive prompts rank expert 0 first \(layer 0\)/);
  // The merged model's figures (here each text is one token): expert 1 gets no assignment, expert 0 two of three.
  assert.deepEqual(r.measured.overall.load.starving, [1]);
  assert.deepEqual(r.measured.overall.load.dominating, [0]);
  const card = routingSection(r);
  assert.match(card, /- expert 1 \(m1\) starves: 0% of the top-k assignments against a fair 33%; its texts go mostly to expert 0 \(m0\)/);
  assert.match(card, /- expert 0 \(m0\) dominates: 67% of the assignments/);
  assert.match(card, /\| recipe prompts \(training fit\) \| 67% \| 67% \| 67% \|/);
  assert.match(card, /training fit: no held-out texts were given/);
});

test('without prompts of its own an expert that wins nothing is reported so; random gates say they need training', () => {
  const r = buildReport(input([[[1, 0, 0, 0], [0, 1, 0, 0]]], [pos('a', 0)], { a: [1, 0, 0, 0] }, { randomGates: true, gateMode: 'random' }));
  assert.deepEqual(r.perLayer[0]!.reasons['1']!.map((x) => x.kind), ['random', 'no-prompts']);
  assert.match(r.summary.notes.join(' '), /random gates are drawn from the seed/);
});

test('non-finite gates and states are warnings, not silent numbers', () => {
  const r = buildReport(input([[[NaN, 0, 0, 0], [0, 1, 0, 0]]], [pos('a', 0), pos('b', 1)], { a: [1, 0, 0, 0], b: [0, Infinity, 0, 0] }));
  const w = r.perLayer[0]!.warnings.join('\n');
  assert.match(w, /gate matrix has non-finite values/);
  assert.match(w, /state of prompt "b" is not finite/);
  assert.equal(r.perLayer[0]!.conditionNumber, null);
  assert.equal(r.perLayer[0]!.reasons['0']![0]!.kind, 'nonfinite');
});

test("Qwen MoE's gated shared expert: softmax over routed experts only, its sigmoid gate beside", () => {
  const inp = input([[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0]]], [pos('a', 0), pos('b', 1), pos('s', 2)], { a: [1, 0, 0, 0], b: [0, 1, 0, 0], s: [0, 0, 1, 0] });
  inp.experts[2] = { index: 2, label: 'shared 0', model: 'm2', shared: true };
  const r = buildReport(inp);
  assert.equal(r.routed, 2);
  const routes = r.perLayer[0]!.routes;
  assert.equal(routes[0]!.probabilities.length, 2);
  assert.ok(Math.abs(routes[2]!.sharedGate! - 1 / (1 + Math.exp(-2))) < 1e-12);
  assert.equal(routes[2]!.ownInTopK, null, 'the shared expert is not routed');
  assert.equal(r.perLayer[0]!.accuracy, 1);
});

test('layer ranges for the summary and the card', () => {
  assert.deepEqual(rangesOf(2), [[0, 0], [1, 1]]);
  assert.deepEqual(rangesOf(32), [[0, 7], [8, 15], [16, 23], [24, 31]]);
  assert.deepEqual(rangesOf(6), [[0, 0], [1, 2], [3, 3], [4, 5]]);
  assert.equal(layerRanges([0, 1, 2, 5, 7, 8]), '0–2, 5, 7–8');
});
