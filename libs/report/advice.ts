/**
 * What a user can act on, from the merged model's figures: which experts the routers cannot tell apart and
 * what would separate them. Each line is said once, and none contradicts the figures beside it.
 */
import { gateModeSpec, type GateMode } from '../gates';
import { whereLayers } from './layers';
import type { Measured, ReportExpert, ReportPrompt } from './types';

const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

export interface AdviceInput {
  gateMode: GateMode;
  randomGates: boolean;
  experts: ReportExpert[];
  prompts: ReportPrompt[];
  measured: Measured;
  layers: number;
  /** Layers the reference's degenerate-routing check names (condition number over 5 or not finite). */
  degenerateLayers: number[];
}

/** What a gate mode builds rows from, and the mode that would use more of what the router sees (the mode's row). */
const otherMode = (mode: GateMode): string | null => gateModeSpec(mode).tryInstead ?? null;

export function routingAdvice(input: AdviceInput): string[] {
  const { experts, measured: m, prompts } = input;
  const name = (e: number) => `${experts[e]!.label} (${experts[e]!.model})`;
  const where = (ls: number[]) => whereLayers(ls, input.layers);
  const out: string[] = [];
  const measured = m.overall[m.headline];
  // Said only where there are figures: random gates with no prompts have none to qualify.
  if (m.headline === 'train' && measured) {
    out.push('These figures are on the recipe\'s own prompts, the texts the routers were built from (training fit): they say how well the routers fit those prompts, not how the model routes new text. Give held-out texts of each expert (evalPrompts) to measure that.');
  }
  const a = m.overall[m.headline];
  if (a && !input.randomGates && a.top1 < 1.25 * m.chance.top1) {
    out.push(`The merged model barely routes by the recipe: ${pct(a.top1)} of ${m.headline === 'heldout' ? 'held-out' : 'recipe'} tokens go first to their intended expert, against ${pct(m.chance.top1)} by chance. Give each expert more prompts that differ from the other experts' in topic and wording${otherMode(input.gateMode) ? `, or try another mode: ${otherMode(input.gateMode)}` : ''}.`);
  }
  // Where the text's own expert loses: to whom most of its tokens go.
  const lostTo = (e: number) => {
    const counts = new Map<number, number>();
    for (const v of m.prompts) {
      const p = prompts[v.prompt]!;
      if (p.set !== m.headline || p.role !== 'positive' || p.expert !== e) continue;
      for (const lv of v.layers) if (lv.winner !== e) counts.set(lv.winner, (counts.get(lv.winner) ?? 0) + 1);
    }
    return [...counts.entries()].sort((x, y) => y[1] - x[1] || x[0] - y[0])[0]?.[0];
  };
  for (const p of m.pairs) {
    const [x, y] = p.experts;
    if (p.kind === 'identical') {
      const same = prompts.filter((q) => q.set === 'train' && q.role === 'positive' && q.expert === x).map((q) => q.text).sort().join('\n') === prompts.filter((q) => q.set === 'train' && q.role === 'positive' && q.expert === y).map((q) => q.text).sort().join('\n');
      const why = input.randomGates ? `${input.gateMode} gates are drawn, not built from prompts: train the router` : same ? 'they have the same positive prompts: give each its own' : `their prompts look alike to the router: give them prompts that differ${otherMode(input.gateMode) ? `, or ${otherMode(input.gateMode)}` : ''}`;
      out.push(`${name(x)} and ${name(y)}: router rows nearly identical in ${where(p.layers)} (cos up to ${p.cosine.toFixed(4)}), so the router cannot tell them apart; ${why}.`);
    } else {
      out.push(`${name(x)} and ${name(y)}: router rows exactly opposite in ${where(p.layers)} (cos ${p.cosine.toFixed(4)}): whatever raises one lowers the other by as much, and the gate matrix is singular (infinite condition number). This happens when one expert's negative prompts are the other's positive ones, or with two experts whose rows were centred; give each positive prompts of its own and more than two experts to separate.`);
    }
  }
  const load = m.overall.load;
  // An expert without texts of its own in the measured set may rightly get none of them: only its own texts' fate is news.
  const hasTexts = (e: number) => prompts.some((p) => p.set === m.headline && p.role === 'positive' && p.expert === e);
  for (const e of load.starving.filter(hasTexts)) {
    const to = lostTo(e);
    out.push(`${name(e)} starves: ${pct(load.load[e]!)} of the top-k assignments against a fair ${pct(1 / load.load.length)}${to !== undefined ? `; its texts go mostly to ${name(to)}` : ''}. Give it prompts unlike the other experts'.`);
  }
  for (const e of load.dominating) out.push(`${name(e)} dominates: ${pct(load.load[e]!)} of the assignments against a fair ${pct(1 / load.load.length)}; its rows lead for most tokens, whatever the text. Give the other experts more prompts, or this one fewer and narrower ones.`);
  if (input.degenerateLayers.length > 0 && a && a.top1 >= 1.5 * m.chance.top1 && m.pairs.length === 0) {
    // The reference's warning stays; what it means for this model is said beside it, once.
    out.push(`The degenerate-routing warning (condition number over 5 in ${where(input.degenerateLayers)}) says the router rows are far from independent; the merged model still sends ${pct(a.top1)} of tokens first to their intended expert (chance ${pct(m.chance.top1)}).`);
  }
  return [...new Set(out)];
}
