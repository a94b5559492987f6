/**
 * Figures of what the merged model routes: every token of every text, through the merged model's own layers
 * (libs/forward/moe.ts gives the router logits). Pure: logits in, figures out.
 */
import { gateRow, type GateTensor } from '../gates';
import type { Agreement, LoadFigures, Measured, MeasuredLayer, MeasuredPair, MeasuredPrompt, ReportPrompt } from './types';

/** Router rows at least this similar are the same expert to the router; at most minus this, exact opposites. */
export const SAME_ROW_COSINE = 0.99;
/** An expert with less than this share of the mean load starves. */
export const STARVING_LOAD = 0.25;

export interface MeasureInput {
  prompts: ReportPrompt[];
  /** Routed experts (E). */
  routed: number;
  topK: number;
  /** The merged model's routers (rows 0..E-1 of each layer are the routed experts'). */
  gates: GateTensor;
  /** Per distinct text: per layer, [T, E] router logits. */
  logits: Map<string, Float32Array[]>;
  layers: number;
}

function softmaxRow(z: Float32Array, at: number, E: number): Float64Array {
  let m = -Infinity;
  for (let e = 0; e < E; e++) m = Math.max(m, z[at + e]!);
  const p = new Float64Array(E);
  let s = 0;
  for (let e = 0; e < E; e++) s += p[e] = Math.exp(z[at + e]! - m);
  for (let e = 0; e < E; e++) p[e]! /= s;
  return p;
}

/** The k most probable experts, most probable first; ties keep the lower index first. */
function top(p: ArrayLike<number>, k: number): number[] {
  return Array.from({ length: p.length }, (_, i) => i)
    .sort((a, b) => p[b]! - p[a]! || a - b)
    .slice(0, k);
}

/** Tallies of one set of texts in one or more layers. */
class Tally {
  tokens = 0;
  top1 = 0;
  topK = 0;
  marginSum = 0;
  texts = 0;
  textTop1 = 0;
  textTopK = 0;
  load: Float64Array;
  constructor(readonly E: number) {
    this.load = new Float64Array(E);
  }
  agreement(): Agreement | null {
    if (this.tokens === 0) return null;
    return {
      tokens: this.tokens,
      top1: this.top1 / this.tokens,
      topK: this.topK / this.tokens,
      margin: this.marginSum / this.tokens,
      texts: this.texts,
      textTop1: this.texts ? this.textTop1 / this.texts : null,
      textTopK: this.texts ? this.textTopK / this.texts : null,
    };
  }
}

export function loadFigures(load: ArrayLike<number>, k: number): LoadFigures {
  const E = load.length;
  const total = Array.from(load).reduce((a, b) => a + b, 0);
  const share = Array.from(load, (x) => (total > 0 ? x / total : 0));
  const mean = 1 / E;
  const max = Math.max(...share);
  const entropy = total === 0 ? 0 : E > 1 ? -share.reduce((a, s) => a + (s > 0 ? s * Math.log(s) : 0), 0) / Math.log(E) : 1;
  // Dominating: twice its fair share, or in (nearly) every token's top k where twice the share cannot be reached.
  const dominant = Math.min(2 * mean, 0.95 / k);
  return {
    load: share,
    maxVio: total > 0 ? max / mean - 1 : 0,
    entropy,
    starving: share.map((s, e) => (total > 0 && s < STARVING_LOAD * mean ? e : -1)).filter((e) => e >= 0),
    dominating: share.map((s, e) => (total > 0 && E > k && s >= dominant ? e : -1)).filter((e) => e >= 0),
  };
}

function cosine(a: Float32Array, b: Float32Array): number {
  let ab = 0, aa = 0, bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!;
    aa += a[i]! * a[i]!;
    bb += b[i]! * b[i]!;
  }
  return aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
}

/**
 * Agreement of the routing with the intended expert (the expert whose prompt list holds the text): per token
 * (top 1, within the top k, margin = p(intended) − p(best other)) and per text (the expert that wins most of
 * its tokens; within the top k by top-k assignments); load per expert (share of top-k assignments), MaxVio,
 * normalised entropy; router row pairs that are near identical or opposite. Held-out texts are the headline
 * when there are any.
 */
export function measureRouting(input: MeasureInput): Measured {
  const { prompts, routed: E, topK: k, logits, layers: L } = input;
  const headline: 'heldout' | 'train' = prompts.some((p) => p.set === 'heldout') ? 'heldout' : 'train';
  // Which texts count toward agreement: positive prompts of a routed expert. Load: every text of the headline set.
  const scored = (p: ReportPrompt) => p.role === 'positive' && p.expert < E;
  const overall = { heldout: new Tally(E), train: new Tally(E) };
  const perLayer: MeasuredLayer[] = [];
  const promptViews: MeasuredPrompt[] = prompts.map((p, i) => ({ prompt: i, tokens: logits.get(p.text)?.[0] ? logits.get(p.text)![0]!.length / E : 0, layers: [] }));
  for (let l = 0; l < L; l++) {
    const t = { heldout: new Tally(E), train: new Tally(E) };
    const loadSeen = { heldout: new Set<string>(), train: new Set<string>() };
    for (const [i, p] of prompts.entries()) {
      const z = logits.get(p.text)?.[l];
      if (!z) throw new Error(`internal: no router logits for prompt ${i} in layer ${l}`);
      const T = z.length / E;
      const wins = new Float64Array(E), inTop = new Float64Array(E), mass = new Float64Array(E);
      let marginSum = 0;
      const own = scored(p) ? p.expert : null;
      let ownTop1 = 0;
      for (let tok = 0; tok < T; tok++) {
        const pr = softmaxRow(z, tok * E, E);
        const chosen = top(pr, k);
        wins[chosen[0]!]!++;
        for (const e of chosen) inTop[e]!++;
        for (let e = 0; e < E; e++) mass[e]! += pr[e]!;
        if (own !== null) {
          let other = -Infinity;
          for (let e = 0; e < E; e++) if (e !== own) other = Math.max(other, pr[e]!);
          marginSum += pr[own]! - (E > 1 ? other : 0);
          if (chosen[0] === own) ownTop1++;
        }
      }
      // The text's winner: most tokens won, ties to the larger summed probability, then the lower index.
      const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => wins[b]! - wins[a]! || mass[b]! - mass[a]! || a - b);
      const winner = order[0]!;
      promptViews[i]!.layers.push({ winner, winnerShare: wins[winner]! / T, ownShare: own !== null ? ownTop1 / T : null, margin: own !== null ? marginSum / T : null });
      const set = p.set;
      // A text listed twice (two experts' prompts) is one text of the load.
      if (set === headline && !loadSeen[set].has(p.text)) {
        loadSeen[set].add(p.text);
        for (let e = 0; e < E; e++) {
          t[set].load[e]! += inTop[e]!;
          overall[set].load[e]! += inTop[e]!;
        }
      }
      if (own === null) continue;
      const byTop = Array.from({ length: E }, (_, e) => e).sort((a, b) => inTop[b]! - inTop[a]! || mass[b]! - mass[a]! || a - b).slice(0, k);
      for (const tally of [t[set], overall[set]]) {
        tally.tokens += T;
        tally.top1 += ownTop1;
        tally.topK += inTop[own]!;
        tally.marginSum += marginSum;
        tally.texts++;
        if (winner === own) tally.textTop1++;
        if (byTop.includes(own)) tally.textTopK++;
      }
    }
    const pairs: MeasuredPair[] = [];
    const rows = Array.from({ length: E }, (_, e) => gateRow(input.gates, l, e));
    for (let a = 0; a < E; a++) for (let b = a + 1; b < E; b++) {
      const c = cosine(rows[a]!, rows[b]!);
      if (c >= SAME_ROW_COSINE) pairs.push({ experts: [a, b], cosine: c, kind: 'identical' });
      else if (c <= -SAME_ROW_COSINE) pairs.push({ experts: [a, b], cosine: c, kind: 'opposite' });
    }
    perLayer.push({ layer: l, heldout: t.heldout.agreement(), train: t.train.agreement(), load: loadFigures(t[headline].load, k), pairs });
  }
  return {
    headline,
    chance: { top1: 1 / E, topK: Math.min(k, E) / E },
    overall: { heldout: overall.heldout.agreement(), train: overall.train.agreement(), load: loadFigures(overall[headline].load, k) },
    perLayer,
    prompts: promptViews,
    pairs: summarizePairs(perLayer),
  };
}

function summarizePairs(perLayer: MeasuredLayer[]): Measured['pairs'] {
  const out = new Map<string, Measured['pairs'][number]>();
  for (const lr of perLayer) for (const p of lr.pairs) {
    const key = `${p.kind}:${p.experts.join(',')}`;
    const cur = out.get(key) ?? { experts: p.experts, kind: p.kind, layers: [], cosine: p.cosine };
    cur.layers.push(lr.layer);
    // The most extreme cosine over the layers.
    cur.cosine = p.kind === 'identical' ? Math.max(cur.cosine, p.cosine) : Math.min(cur.cosine, p.cosine);
    out.set(key, cur);
  }
  return [...out.values()];
}
