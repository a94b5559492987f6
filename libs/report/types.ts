/** routing.json: what the routers do with the prompts, layer by layer, before anyone loads the model. */

import type { GateMode } from '../gates';

export interface ReportExpert {
  /** Row of the gate tensor: routed experts first, then gated shared experts. */
  index: number;
  /** `expert 0`, `shared 0`. */
  label: string;
  model: string;
  shared: boolean;
}

export interface ReportPrompt {
  text: string;
  /** `train`: a recipe prompt the gates were built from; `heldout`: an evaluation prompt. */
  set: 'train' | 'heldout';
  role: 'positive' | 'negative';
  /** Gate row of the expert whose list holds the prompt. */
  expert: number;
}

export interface Route {
  /** Index into `prompts`. */
  prompt: number;
  /** Softmax over the routed experts of the gate rows times the prompt's state, in float64. */
  probabilities: number[];
  /** The experts_per_token most probable routed experts, most probable first (ties: lower index first). */
  topK: number[];
  /** Positive prompts of a routed expert: whether that expert is among `topK`; null otherwise. */
  ownInTopK: boolean | null;
  /** Qwen MoE's gated shared expert: sigmoid of its gate row times the state. */
  sharedGate?: number;
}

export type ReasonKind = 'parallel' | 'cancel' | 'outvoted' | 'random' | 'nonfinite' | 'no-prompts' | 'never-first';

export interface Reason {
  kind: ReasonKind;
  /** The other expert involved (parallel, outvoted). */
  partner?: number;
  /** Cosine of the gate rows (parallel), |pos − neg| / |pos| (cancel), share of own prompts lost (outvoted). */
  value?: number;
  text: string;
  /** The cause without this layer's figures, for the summary (default: text). */
  summary?: string;
}

export interface LayerReport {
  layer: number;
  /** σmax/σmin of the gate matrix (every gated row), as the degenerate-routing check computes it; null if not finite. */
  conditionNumber: number | null;
  singularValues: number[];
  /** Smallest difference between consecutive singular values (null with one row). */
  minSingularGap: number | null;
  /** Share of routed experts' positive prompts whose own expert is in the top-k (null without such prompts). */
  accuracy: number | null;
  heldOutAccuracy: number | null;
  /** Per routed expert: how many distinct positive recipe prompts have it in their top-k. */
  load: number[];
  /** Per routed expert: how many distinct positive recipe prompts rank it first, strictly ahead of every other. */
  wins: number[];
  /** Routed experts that win no prompt in this layer. */
  starving: number[];
  reasons: Record<string, Reason[]>;
  /** Routed expert pairs whose gate rows are nearly parallel. */
  parallel: { experts: [number, number]; cosine: number }[];
  warnings: string[];
  routes: Route[];
}

export interface StarvingExpert {
  expert: number;
  layers: number[];
  reasons: string[];
}

export interface RangeAccuracy {
  from: number;
  to: number;
  accuracy: number | null;
  heldOutAccuracy: number | null;
}

export interface ReportSummary {
  accuracy: number | null;
  heldOutAccuracy: number | null;
  byRange: RangeAccuracy[];
  starving: StarvingExpert[];
  pairs: { experts: [number, number]; layers: number[]; minCosine: number }[];
  /** Layers the degenerate-routing warning names (condition number over 5). */
  degenerateLayers: number[];
  notes: string[];
}

export interface RoutingReport {
  version: 2;
  name: string;
  gateMode: GateMode;
  topK: number;
  /** Which state of a prompt the report routes: what the gates were built from. */
  state: string;
  layers: number;
  hidden: number;
  /** Gate rows: routed experts (the softmax router), then gated shared experts. */
  experts: ReportExpert[];
  routed: number;
  prompts: ReportPrompt[];
  summary: ReportSummary;
  perLayer: LayerReport[];
  /** Recipe-level warnings (the degenerate-routing warning as the build prints it). */
  warnings: string[];
  /**
   * The headline: what the merged model routes, every token through its own layers. `summary` and `perLayer`
   * are the build check: the recipe prompts' states the gates were built from (base model), through the gates.
   */
  measured: Measured;
  /** What the user can act on (libs/report/advice.ts). */
  advice: string[];
}

/** Agreement of the merged model's routing with the intended expert, over the positive prompts of routed experts. */
export interface Agreement {
  tokens: number;
  /** Share of tokens whose first choice is the intended expert (chance 1/E). */
  top1: number;
  /** Share of tokens with the intended expert within their top k (chance k/E). */
  topK: number;
  /** Mean over tokens of p(intended) − p(best other expert): above 0 the intended expert leads. */
  margin: number;
  texts: number;
  /** Share of texts whose most-chosen first choice (over their tokens) is the intended expert. */
  textTop1: number | null;
  /** Share of texts with the intended expert among the k experts most often in their tokens' top k. */
  textTopK: number | null;
}

export interface LoadFigures {
  /** Per routed expert: its share of all top-k assignments (sums to 1). */
  load: number[];
  /** max(load) / mean(load) − 1: 0 is perfectly balanced. */
  maxVio: number;
  /** Entropy of the load over log(E): 1 is perfectly balanced. */
  entropy: number;
  /** Under a quarter of the mean load. */
  starving: number[];
  /** Twice the mean load, or in nearly every token's top k where twice cannot be reached. */
  dominating: number[];
}

export interface MeasuredPair {
  experts: [number, number];
  cosine: number;
  /** `identical`: cosine ≥ 0.99 (the router cannot tell them apart); `opposite`: ≤ −0.99 (the Gram matrix is singular). */
  kind: 'identical' | 'opposite';
}

export interface MeasuredLayer {
  layer: number;
  heldout: Agreement | null;
  train: Agreement | null;
  /** Load of the headline set's tokens. */
  load: LoadFigures;
  pairs: MeasuredPair[];
}

/** One prompt across the layers: which expert wins most of its tokens, and how its intended expert fares. */
export interface MeasuredPrompt {
  /** Index into `prompts`. */
  prompt: number;
  tokens: number;
  layers: { winner: number; winnerShare: number; ownShare: number | null; margin: number | null }[];
}

/** What the merged model routes: every token of every text through its own layers (libs/forward/moe.ts). */
export interface Measured {
  /** `heldout` when evaluation texts were given; else the figures are the recipe's own prompts (training fit). */
  headline: 'heldout' | 'train';
  chance: { top1: number; topK: number };
  overall: { heldout: Agreement | null; train: Agreement | null; load: LoadFigures };
  perLayer: MeasuredLayer[];
  prompts: MeasuredPrompt[];
  pairs: { experts: [number, number]; kind: 'identical' | 'opposite'; layers: number[]; cosine: number }[];
}
