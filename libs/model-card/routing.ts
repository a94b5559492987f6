import type { Agreement, RoutingReport } from '../report';
import { markdownText } from '../util';

const pct = (x: number | null | undefined) => (x === null || x === undefined ? '—' : `${(100 * x).toFixed(0)}%`);
const signed = (x: number | null | undefined) => (x === null || x === undefined ? '—' : `${x >= 0 ? '+' : ''}${x.toFixed(2)}`);
/** Labels, model names and advice quoting prompts: user text, never markup. */
const cell = markdownText;

/**
 * The card's routing section: the figures of routing.json's `measured` (the merged model run on every token),
 * beside chance, with the report's advice; the page is linked (`link`, relative to the card).
 */
export function routingSection(report: RoutingReport, link = 'routing.html'): string {
  const m = report.measured;
  const k = report.topK;
  const on = m.headline === 'heldout' ? 'held-out texts' : "the recipe's own prompts (training fit: no held-out texts were given)";
  const row = (what: string, a: Agreement | null) => `| ${what} | ${pct(a?.top1)} | ${pct(a?.topK)} | ${pct(a?.textTop1)} | ${signed(a?.margin)} |`;
  const lines = [
    '## Routing',
    '',
    `What this model's untrained routers do (top-${k} of ${report.routed} experts), measured by running the model on every token of ${on}; from moe-forge's routing report: [${link}](${link}). Chance: ${pct(m.chance.top1)} first, ${pct(m.chance.topK)} within the top ${k}.`,
    '',
    `| texts | tokens first to the intended expert | intended within top ${k} | texts won by the intended expert | margin |`,
    '|---|---|---|---|---|',
    ...(m.headline === 'heldout' ? [row('held-out', m.overall.heldout)] : []),
    row('recipe prompts (training fit)', m.overall.train),
    '',
    `| layer | first to intended | within top ${k} | MaxVio | entropy |`,
    '|---|---|---|---|---|',
    ...m.perLayer.map((lr) => `| ${lr.layer} | ${pct(lr[m.headline]?.top1)} | ${pct(lr[m.headline]?.topK)} | ${lr.load.maxVio.toFixed(2)} | ${lr.load.entropy.toFixed(2)} |`),
    '',
    `Margin: the mean over tokens of p(intended) − p(best other expert). Load: share of top-${k} assignments; MaxVio = max load / mean load − 1 (0 is balanced); entropy of the load over log ${report.routed} (1 is balanced). Overall load: MaxVio ${m.overall.load.maxVio.toFixed(2)}, entropy ${m.overall.load.entropy.toFixed(2)}.`,
    '',
  ];
  for (const a of report.advice) lines.push(`- ${cell(a)}`);
  lines.push('');
  return lines.join('\n');
}
