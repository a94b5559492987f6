/** The merged model's routing figures from hand-made router logits: agreement, per text, load, margins, row pairs, advice. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadFigures, measureRouting, routingAdvice, type ReportExpert, type ReportPrompt } from '../../libs/report';

const close = (a: number | null | undefined, b: number, what: string) => assert.ok(a !== null && a !== undefined && Math.abs(a - b) < 1e-9, `${what}: ${a} vs ${b}`);
const softmax = (z: number[]) => {
  const e = z.map((x) => Math.exp(x - Math.max(...z)));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
};
const experts: ReportExpert[] = [0, 1, 2].map((i) => ({ index: i, label: `expert ${i}`, model: `org/m${i}`, shared: false }));

// Three experts, top 2, one layer; rows: e0 and e2 nearly identical, e1 exactly opposite to e0.
const gates = { layers: 1, experts: 3, hidden: 2, data: Float32Array.from([1, 0, -1, 0, 1, 0.001]) };
const prompts: ReportPrompt[] = [
  { text: 'a', set: 'heldout', role: 'positive', expert: 0 },
  { text: 'b', set: 'heldout', role: 'positive', expert: 1 },
  { text: 'c', set: 'train', role: 'positive', expert: 2 },
];
const A = [[2, 1, 0], [0, 2, 1], [1, 2, 0]];
const logits = new Map([
  ['a', [Float32Array.from(A.flat())]],
  ['b', [Float32Array.from([0, 3, 0])]],
  ['c', [Float32Array.from([0, 0, 5])]],
]);

test('agreement per token and per text, margin, load, MaxVio, entropy, and router row pairs', () => {
  const m = measureRouting({ prompts, routed: 3, topK: 2, gates, logits, layers: 1 });
  assert.equal(m.headline, 'heldout');
  close(m.chance.top1, 1 / 3, 'chance top 1');
  close(m.chance.topK, 2 / 3, 'chance top k');
  const h = m.overall.heldout!;
  // Text a: first choices 0, 1, 1 (own 0 first once); within the top 2 on tokens 0 and 2. Text b: its one token.
  assert.equal(h.tokens, 4);
  close(h.top1, 2 / 4, 'top 1');
  close(h.topK, 3 / 4, 'top k');
  // Text a is won by expert 1 (two tokens of three), but expert 0 is among its two most chosen; text b is won by its own.
  close(h.textTop1, 1 / 2, 'texts won');
  close(h.textTopK, 1, 'texts within top k');
  const margin = (z: number[], own: number) => {
    const p = softmax(z);
    return p[own]! - Math.max(...p.filter((_, e) => e !== own));
  };
  close(h.margin, (A.reduce((s, z) => s + margin(z, 0), 0) + margin([0, 3, 0], 1)) / 4, 'margin');
  close(m.overall.train!.top1, 1, 'training fit');
  // Load of the headline (held-out) texts: top-2 assignments 3, 4, 1 of 8.
  assert.deepEqual(m.overall.load.load, [3 / 8, 4 / 8, 1 / 8]);
  close(m.overall.load.maxVio, 0.5 * 3 - 1, 'MaxVio');
  close(m.overall.load.entropy, -[3 / 8, 4 / 8, 1 / 8].reduce((s, x) => s + x * Math.log(x), 0) / Math.log(3), 'entropy');
  // Twice the mean (2/3) cannot be reached with top 2; in 95% of tokens' top 2 is the bar: 0.5 ≥ 0.475.
  assert.deepEqual(m.overall.load.dominating, [1]);
  assert.deepEqual(m.overall.load.starving, []);
  assert.deepEqual(m.pairs.map((p) => [p.kind, p.experts]), [['opposite', [0, 1]], ['identical', [0, 2]], ['opposite', [1, 2]]]);
  // Per text across layers: the winner and the share it wins, and the intended expert's share.
  assert.deepEqual(m.prompts[0]!.layers.map((x) => [x.winner, x.winnerShare, x.ownShare]), [[1, 2 / 3, 1 / 3]]);
  assert.equal(m.prompts[0]!.tokens, 3);

  const advice = routingAdvice({ gateMode: 'hidden', randomGates: false, experts, prompts, measured: m, layers: 1, degenerateLayers: [0] });
  assert.ok(advice.some((a) => /^expert 0 \(org\/m0\) and expert 2 \(org\/m2\): router rows nearly identical in layer 0 .*cannot tell them apart; their prompts look alike to the router: give them prompts that differ, or gate_mode hidden_avg/.test(a)), advice.join('\n'));
  assert.ok(advice.some((a) => /^expert 0 \(org\/m0\) and expert 1 \(org\/m1\): router rows exactly opposite in layer 0 \(cos -1\.0000\).*infinite condition number/.test(a)), advice.join('\n'));
  assert.ok(advice.some((a) => /^expert 1 \(org\/m1\) dominates: 50% of the assignments against a fair 33%/.test(a)));
  // Held-out texts given: no training-fit note; agreement above 1.25x chance: no "barely routes" line; the
  // degenerate-routing check is explained by the row pairs, so nothing is said twice.
  assert.ok(!advice.some((a) => /training fit|barely routes|degenerate-routing warning/.test(a)), advice.join('\n'));
  assert.equal(new Set(advice).size, advice.length);
});

test('without held-out texts the figures say they are training fit; near-chance routing and degenerate rows say what to do, once', () => {
  const train = prompts.map((p) => ({ ...p, set: 'train' as const }));
  // Every token goes first to expert 1, whatever its text.
  const flat = new Map([...logits.keys()].map((t) => [t, [Float32Array.from({ length: logits.get(t)![0]!.length }, (_, i) => (i % 3 === 1 ? 9 : 0))]]));
  const apart = { layers: 1, experts: 3, hidden: 3, data: Float32Array.from([1, 0, 0, 0, 1, 0, 0, 0, 1]) };
  const m = measureRouting({ prompts: train, routed: 3, topK: 1, gates: apart, logits: flat, layers: 1 });
  assert.equal(m.headline, 'train');
  assert.equal(m.overall.heldout, null);
  close(m.overall.train!.top1, 1 / 5, 'only text b\'s one token is routed as intended');
  assert.deepEqual(m.overall.load.starving, [0, 2]);
  const advice = routingAdvice({ gateMode: 'cheap_embed', randomGates: false, experts, prompts: train, measured: m, layers: 1, degenerateLayers: [0] });
  assert.match(advice[0]!, /^These figures are on the recipe's own prompts, the texts the routers were built from \(training fit\)/);
  assert.ok(advice.some((a) => /^The merged model barely routes by the recipe: 20% of recipe tokens go first to their intended expert, against 33% by chance\..*gate_mode hidden builds each row/.test(a)), advice.join('\n'));
  assert.ok(advice.some((a) => /^expert 0 \(org\/m0\) starves: 0% .*its texts go mostly to expert 1 \(org\/m1\)/.test(a)), advice.join('\n'));
  // Agreement near chance: the degenerate-routing warning needs no "but routing works" beside it.
  assert.ok(!advice.some((a) => /still sends/.test(a)));
});

test('a degenerate gate matrix beside routing that works is said so, once, with the figures', () => {
  const good = new Map([['a', [Float32Array.from([5, 0, 0])]], ['b', [Float32Array.from([0, 5, 0])]], ['c', [Float32Array.from([0, 0, 5])]]]);
  const apart = { layers: 1, experts: 3, hidden: 3, data: Float32Array.from([1, 0, 0, 0, 1, 0, 0, 0, 1]) };
  const m = measureRouting({ prompts, routed: 3, topK: 1, gates: apart, logits: good, layers: 1 });
  const advice = routingAdvice({ gateMode: 'hidden', randomGates: false, experts, prompts, measured: m, layers: 1, degenerateLayers: [0] });
  assert.deepEqual(advice.filter((a) => /degenerate-routing warning/.test(a)), ['The degenerate-routing warning (condition number over 5 in layer 0) says the router rows are far from independent; the merged model still sends 100% of tokens first to their intended expert (chance 33%).']);
  assert.deepEqual(routingAdvice({ gateMode: 'hidden', randomGates: false, experts, prompts, measured: m, layers: 1, degenerateLayers: [] }), []);
});

test('load figures: balanced, and an empty tally', () => {
  assert.deepEqual(loadFigures([2, 2, 2, 2], 2), { load: [0.25, 0.25, 0.25, 0.25], maxVio: 0, entropy: 1, starving: [], dominating: [] });
  assert.deepEqual(loadFigures([0, 0], 1), { load: [0, 0], maxVio: 0, entropy: 0, starving: [], dominating: [] });
});
