import type { RoutingReport } from '../report/types';
import { layerRanges } from '../report/routing';
import { markdownText } from '../util/escape';

const pct = (x: number | null) => (x === null ? '—' : `${(100 * x).toFixed(0)}%`);
/** Labels, model names and reasons quoting prompts: user text, never markup. */
const cell = markdownText;

/**
 * The card's routing section: accuracy per layer range and the starving experts, from the routing report
 * written beside the card (`link`, relative to the card).
 */
export function routingSection(report: RoutingReport, link = 'routing.html'): string {
  const s = report.summary;
  const held = s.heldOutAccuracy !== null;
  const lines = [
    '## Routing',
    '',
    `How the untrained routers send this card's prompts (top-${report.topK} of ${report.routed} experts), from moe-forge's routing report: [${link}](${link}).`,
    '',
    `| layers | routing accuracy${held ? ' | held-out accuracy' : ''} |`,
    `|---|---|${held ? '---|' : ''}`,
    ...s.byRange.map((r) => `| ${r.from === r.to ? r.from : `${r.from}–${r.to}`} | ${pct(r.accuracy)}${held ? ` | ${pct(r.heldOutAccuracy)}` : ''} |`),
    '',
    'Routing accuracy: the share of positive prompts whose own expert is among the experts chosen for them.',
    '',
  ];
  if (s.starving.length === 0) lines.push('- No expert starves: in every layer each expert is the first choice of at least one prompt.');
  for (const x of s.starving) {
    const e = report.experts[x.expert]!;
    const where = x.layers.length === report.layers && report.layers > 1 ? 'every layer' : `layer${x.layers.length === 1 ? '' : 's'} ${layerRanges(x.layers)}`;
    lines.push(`- Starving: ${cell(e.label)} (${cell(e.model)}) in ${where}: ${cell(x.reasons[0] ?? '')}`);
  }
  for (const n of s.notes) lines.push(`- ${cell(n)}`);
  lines.push('');
  return lines.join('\n');
}
