import { conditionNumber, singularValues, gateRow, type GateTensor } from '../gates';
import type { GateMode } from '../gates';
import type { LayerReport, Measured, Reason, ReportExpert, ReportPrompt, ReportSummary, Route, RoutingReport } from './types';
import { routingAdvice } from './advice';
import { whereLayers } from './layers';

/** Gate rows with a cosine at least this are "nearly parallel": the router cannot tell the two experts apart. */
export const PARALLEL_COSINE = 0.99;
/** |mean(pos) − mean(neg)| below this share of |mean(pos)|: the negative prompts cancel the positive ones. */
export const CANCEL_RATIO = 0.1;
/** Two prompts' states this close in direction are the same prompt to the router. */
export const SAME_STATE_COSINE = 0.999;
/** A first choice must lead the second by more than this probability to count as a win. */
export const TIE = 1e-9;
/** The reference's degenerate-routing threshold on the condition number. */
export const DEGENERATE_CONDITION = 5;

export interface ReportInput {
  name: string;
  gateMode: GateMode;
  topK: number;
  state: string;
  gates: GateTensor;
  experts: ReportExpert[];
  prompts: ReportPrompt[];
  /**
   * The state the router sees, per distinct text: one vector per layer, or one vector for every layer
   * (cheap_embed). Float32 as stored by the stages; every product is taken in float64.
   */
  states: Map<string, Float32Array[]>;
  /** random / uniform_random: the gates were not built from prompts. */
  randomGates: boolean;
  warnings: string[];
  /** What the merged model routes (libs/report/measured.ts). */
  measured: Measured;
}

export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let k = 0; k < a.length; k++) s += a[k]! * b[k]!;
  return s;
}

export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const d = Math.sqrt(dot(a, a) * dot(b, b));
  return d > 0 ? dot(a, b) / d : 0;
}

/** Softmax over logits, float64, max-shifted. */
export function softmax(logits: number[]): number[] {
  const m = Math.max(...logits);
  const e = logits.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

/** The k most probable indices, most probable first; ties keep the lower index first. */
export function topK(p: number[], k: number): number[] {
  return p
    .map((v, i) => [v, i] as const)
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, Math.min(k, p.length))
    .map(([, i]) => i);
}

/** The strict first choice, or null when the top two are tied within TIE (or there is one expert and no contest). */
export function winner(p: number[]): number | null {
  const [a, b] = topK(p, 2);
  if (a === undefined) return null;
  if (b === undefined) return a;
  return p[a]! - p[b]! > TIE ? a : null;
}

const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null);
function finite(v: ArrayLike<number>): boolean {
  // x − x is 0 for finite x and NaN for ±Inf and NaN.
  let s = 0;
  for (let k = 0; k < v.length; k++) s += v[k]! - v[k]!;
  return s === 0;
}

function meanVector(vs: ArrayLike<number>[], H: number): Float64Array | null {
  if (vs.length === 0) return null;
  const out = new Float64Array(H);
  for (const v of vs) for (let k = 0; k < H; k++) out[k] += v[k]! / vs.length;
  return out;
}

/** At most four contiguous layer ranges of near-equal length (one per layer when there are four or fewer). */
export function rangesOf(L: number): [number, number][] {
  const n = Math.min(4, L);
  return Array.from({ length: n }, (_, i) => [Math.floor((i * L) / n), Math.floor(((i + 1) * L) / n) - 1] as [number, number]);
}

/** The whole report: routes per layer and prompt, per-layer figures, and why experts starve. Pure. */
export function buildReport(input: ReportInput): RoutingReport {
  const { gates, experts, prompts, states } = input;
  const L = gates.layers;
  const H = gates.hidden;
  const R = experts.filter((e) => !e.shared).length;
  const k = input.topK;
  const stateAt = (text: string, l: number) => {
    const s = states.get(text);
    if (!s) throw new Error(`no state for prompt ${JSON.stringify(text)}`);
    return s[Math.min(l, s.length - 1)]!;
  };
  const label = (e: number) => experts[e]!.label;
  const trainPositive = [...new Set(prompts.filter((p) => p.set === 'train' && p.role === 'positive').map((p) => p.text))];
  const perLayer: LayerReport[] = [];
  for (let l = 0; l < L; l++) {
    const rows = experts.map((e) => gateRow(gates, l, e.index));
    const routedRows = rows.slice(0, R);
    const probsOf = new Map<string, number[]>();
    const route = (text: string) => {
      let p = probsOf.get(text);
      if (!p) {
        const x = stateAt(text, l);
        p = softmax(routedRows.map((g) => dot(g, x)));
        probsOf.set(text, p);
      }
      return p;
    };
    const routes: Route[] = prompts.map((pr, i) => {
      const probabilities = route(pr.text);
      const chosen = topK(probabilities, k);
      const r: Route = { prompt: i, probabilities, topK: chosen, ownInTopK: pr.role === 'positive' && pr.expert < R ? chosen.includes(pr.expert) : null };
      if (experts.length > R) {
        const x = stateAt(pr.text, l);
        r.sharedGate = 1 / (1 + Math.exp(-dot(rows[R]!, x)));
      }
      return r;
    });
    const acc = (set: 'train' | 'heldout') => {
      const own = routes.filter((r) => prompts[r.prompt]!.set === set && r.ownInTopK !== null).map((r) => (r.ownInTopK ? 1 : 0));
      return mean(own);
    };
    const load = new Array<number>(R).fill(0);
    const wins = new Array<number>(R).fill(0);
    for (const t of trainPositive) {
      const p = route(t);
      for (const e of topK(p, k)) load[e]!++;
      const w = winner(p);
      if (w !== null) wins[w]!++;
    }
    const cond = rows.every(finite) ? conditionNumber(rows) : NaN;
    const sv = rows.every(finite) ? singularValues(rows) : [];
    const gaps = sv.slice(1).map((s, i) => sv[i]! - s);
    const parallel: LayerReport['parallel'] = [];
    for (let a = 0; a < R; a++) for (let b = a + 1; b < R; b++) {
      const c = cosine(routedRows[a]!, routedRows[b]!);
      if (c >= PARALLEL_COSINE) parallel.push({ experts: [a, b], cosine: c });
    }
    const starving = trainPositive.length > 0 || input.randomGates ? wins.map((w, e) => (w === 0 ? e : -1)).filter((e) => e >= 0) : [];
    const reasons: Record<string, Reason[]> = {};
    for (const e of starving) reasons[e] = explain(e, l, { input, routedRows, parallel, route, stateAt, label, R });
    const warnings: string[] = [];
    if (!rows.every(finite)) warnings.push('gate matrix has non-finite values (NaN or Inf)');
    else if (!(cond <= DEGENERATE_CONDITION)) warnings.push(`degenerate routing: condition number ${Number.isFinite(cond) ? cond.toFixed(1) : 'infinite'} > ${DEGENERATE_CONDITION}`);
    for (const t of new Set(prompts.map((p) => p.text))) if (!finite(stateAt(t, l))) warnings.push(`state of prompt ${JSON.stringify(t)} is not finite`);
    for (const { experts: [a, b], cosine: c } of parallel) warnings.push(`${label(a)} and ${label(b)}: gate rows nearly parallel (cos ${c.toFixed(4)})`);
    if (starving.length > 0) warnings.push(`starving: ${starving.map(label).join(', ')}`);
    perLayer.push({
      layer: l,
      conditionNumber: Number.isFinite(cond) ? cond : null,
      singularValues: sv,
      minSingularGap: gaps.length ? Math.min(...gaps) : null,
      accuracy: acc('train'),
      heldOutAccuracy: acc('heldout'),
      load,
      wins,
      starving,
      reasons,
      parallel,
      warnings,
      routes,
    });
  }
  const summary = summarize(perLayer, input, R, label, trainPositive.length);
  return {
    version: 2,
    name: input.name,
    gateMode: input.gateMode,
    topK: k,
    state: input.state,
    layers: L,
    hidden: H,
    experts,
    routed: R,
    prompts,
    summary,
    perLayer,
    warnings: input.warnings,
    measured: input.measured,
    advice: routingAdvice({ gateMode: input.gateMode, randomGates: input.randomGates, experts, prompts, measured: input.measured, layers: L, degenerateLayers: summary.degenerateLayers }),
  };
}

interface ExplainCtx {
  input: ReportInput;
  routedRows: Float32Array[];
  parallel: LayerReport['parallel'];
  route: (text: string) => number[];
  stateAt: (text: string, l: number) => Float32Array;
  label: (e: number) => string;
  R: number;
}

/** Why expert e wins no prompt in layer l: the causes that hold, most specific first. */
function explain(e: number, l: number, c: ExplainCtx): Reason[] {
  const { input, routedRows, label } = c;
  const H = input.gates.hidden;
  const out: Reason[] = [];
  if (!finite(routedRows[e]!)) return [{ kind: 'nonfinite', text: `its gate row is not finite (NaN or Inf): check the models and prompt states` }];
  if (input.randomGates) out.push({ kind: 'random', text: `${input.gateMode} gates are not built from prompts: the router needs training` });
  const own = (role: 'positive' | 'negative') => input.prompts.filter((p) => p.set === 'train' && p.expert === e && p.role === role).map((p) => p.text);
  const pos = own('positive');
  const neg = own('negative');
  for (const { experts: [a, b], cosine: cos } of c.parallel) {
    if (a !== e && b !== e) continue;
    const f = a === e ? b : a;
    const pf = input.prompts.filter((p) => p.set === 'train' && p.expert === f && p.role === 'positive').map((p) => p.text);
    const me = meanVector(pos.map((t) => c.stateAt(t, l)), H);
    const mf = meanVector(pf.map((t) => c.stateAt(t, l)), H);
    const same = pos.length > 0 && pos.length === pf.length && pos.every((t) => pf.includes(t));
    const states = same ? 'they have the same positive prompts' : me && mf ? `their positive prompts' states are nearly parallel (cos ${cosine(me, mf).toFixed(4)})` : 'their prompt states are nearly parallel';
    const why = same ? 'they have the same positive prompts' : 'their prompt states are nearly parallel';
    out.push({ kind: 'parallel', partner: f, value: cos, text: `gate rows of ${label(e)} and ${label(f)} are nearly parallel (cos ${cos.toFixed(4)}): ${states}, so the router cannot tell them apart`, summary: `gate rows nearly parallel to ${label(f)}'s (${why}): the router cannot tell them apart` });
  }
  if (neg.length > 0 && pos.length > 0) {
    const both = pos.filter((t) => neg.includes(t));
    let pair: [string, string, number] | null = null;
    for (const p of pos) for (const n of neg) {
      const cs = cosine(c.stateAt(p, l), c.stateAt(n, l));
      if (p !== n && cs >= SAME_STATE_COSINE && (!pair || cs > pair[2])) pair = [p, n, cs];
    }
    const mp = meanVector(pos.map((t) => c.stateAt(t, l)), H)!;
    const mn = meanVector(neg.map((t) => c.stateAt(t, l)), H)!;
    const diff = mp.map((x, i) => x - mn[i]!);
    const ratio = Math.sqrt(dot(diff, diff) / Math.max(dot(mp, mp), 1e-300));
    if (both.length > 0) {
      const text = `the prompt ${JSON.stringify(both[0])} is both a positive and a negative prompt of ${label(e)}: it cancels itself`;
      out.push({ kind: 'cancel', value: ratio, text, summary: text });
    } else if (pair) {
      const summary = `negative prompt ${JSON.stringify(pair[1])} cancels positive prompt ${JSON.stringify(pair[0])}`;
      out.push({ kind: 'cancel', value: ratio, text: `${summary} (states' cos ${pair[2].toFixed(4)})`, summary });
    } else if (ratio < CANCEL_RATIO) {
      const summary = 'its negative prompts nearly cancel its positive ones: the gate row is mostly noise';
      out.push({ kind: 'cancel', value: ratio, text: `its negative prompts nearly cancel its positive ones (|pos − neg| = ${ratio.toFixed(3)}·|pos|): the gate row is mostly noise`, summary });
    }
  }
  if (pos.length === 0) out.push({ kind: 'no-prompts', text: `it has no positive prompts and no other prompt ranks it first` });
  else {
    const lostTo = new Map<number, number>();
    for (const t of pos) {
      const w = winner(c.route(t));
      if (w !== null && w !== e) lostTo.set(w, (lostTo.get(w) ?? 0) + 1);
    }
    const [f, n] = [...lostTo.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0])[0] ?? [undefined, 0];
    if (f !== undefined && !out.some((r) => r.kind === 'parallel' && r.partner === f)) {
      out.push({ kind: 'outvoted', partner: f, value: n / pos.length, text: `${n} of its ${pos.length} positive prompt${pos.length === 1 ? '' : 's'} rank ${label(f)} first`, summary: `its positive prompts rank ${label(f)} first` });
    }
  }
  if (out.length === 0) out.push({ kind: 'never-first', text: 'no prompt ranks it first, strictly ahead of every other expert' });
  return out;
}

function summarize(perLayer: LayerReport[], input: ReportInput, R: number, label: (e: number) => string, trainPositives: number): ReportSummary {
  const L = perLayer.length;
  const pooled = (set: 'train' | 'heldout', layers: LayerReport[]) =>
    mean(layers.flatMap((lr) => lr.routes.filter((r) => input.prompts[r.prompt]!.set === set && r.ownInTopK !== null).map((r) => (r.ownInTopK ? 1 : 0))));
  const starving = Array.from({ length: R }, (_, e) => {
    const layers = perLayer.filter((lr) => lr.starving.includes(e)).map((lr) => lr.layer);
    // One line per cause, with the layers it holds in.
    const byText = new Map<string, number[]>();
    for (const lr of perLayer) {
      for (const r of lr.reasons[e] ?? []) {
        const key = r.summary ?? r.text;
        byText.set(key, [...(byText.get(key) ?? []), lr.layer]);
      }
    }
    const reasons = [...byText.entries()].map(([t, ls]) => `${t} (${whereLayers(ls, L)})`);
    return { expert: e, layers, reasons };
  }).filter((s) => s.layers.length > 0);
  const pairMap = new Map<string, { experts: [number, number]; layers: number[]; minCosine: number }>();
  for (const lr of perLayer) for (const p of lr.parallel) {
    const key = p.experts.join(',');
    const cur = pairMap.get(key) ?? { experts: p.experts, layers: [], minCosine: 1 };
    cur.layers.push(lr.layer);
    cur.minCosine = Math.min(cur.minCosine, p.cosine);
    pairMap.set(key, cur);
  }
  const notes: string[] = [];
  if (trainPositives === 0) notes.push('The recipe has no positive prompts: accuracy and starvation cannot be measured from the recipe alone (give held-out prompts).');
  if (input.randomGates) notes.push(`${input.gateMode} gates are drawn from the seed, not built from prompts: routing is arbitrary until the model is trained.`);
  return {
    accuracy: pooled('train', perLayer),
    heldOutAccuracy: pooled('heldout', perLayer),
    byRange: rangesOf(L).map(([from, to]) => ({ from, to, accuracy: pooled('train', perLayer.slice(from, to + 1)), heldOutAccuracy: pooled('heldout', perLayer.slice(from, to + 1)) })),
    starving,
    pairs: [...pairMap.values()],
    degenerateLayers: perLayer.filter((lr) => lr.conditionNumber === null || lr.conditionNumber > DEGENERATE_CONDITION).map((lr) => lr.layer),
    notes,
  };
}
