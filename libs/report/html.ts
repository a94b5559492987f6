import { escapeHtml } from '../util';
import { layerRanges } from './layers';
import type { LayerReport, RoutingReport } from './types';
import { MEASURED_STYLE, measuredSection } from './html-measured';

/** Text and attribute values: prompts are user text and must never become markup. */
export const esc = escapeHtml;

const pct = (x: number | null) => (x === null ? '—' : `${(100 * x).toFixed(0)}%`);
const num = (x: number | null, digits = 3) => (x === null ? '∞' : x >= 1e4 ? x.toExponential(2) : x.toFixed(digits));

/**
 * Diverging around the uniform share u = 1/R (white): blue above, orange below, on a square-root scale so
 * that the small departures of untrained routers stay visible.
 */
export function cellColor(p: number, u: number): string {
  const [to, t] = p >= u ? [[8, 48, 107], Math.sqrt(Math.min(1, (p - u) / (1 - u || 1)))] : [[230, 85, 13], Math.sqrt(Math.min(1, (u - p) / u))];
  const c = (a: number, b: number) => Math.round(a + (b - a) * (t as number));
  const [r, g, b] = to as number[];
  return `rgb(${c(255, r!)},${c(255, g!)},${c(255, b!)})`;
}

interface Group {
  title: string;
  expert: number;
  prompts: number[];
  kind: 'positive' | 'negative' | 'heldout';
}

function groupsOf(r: RoutingReport): Group[] {
  const out: Group[] = [];
  for (const e of r.experts) {
    const pick = (set: 'train' | 'heldout', role: 'positive' | 'negative') =>
      r.prompts.map((p, i) => (p.expert === e.index && p.set === set && p.role === role ? i : -1)).filter((i) => i >= 0);
    const add = (kind: Group['kind'], prompts: number[], what: string) => prompts.length && out.push({ title: `${e.label} · ${what}`, expert: e.index, prompts, kind });
    add('positive', pick('train', 'positive'), 'positive');
    add('heldout', pick('heldout', 'positive'), 'held-out');
    add('negative', pick('train', 'negative'), 'negative');
  }
  return out;
}

/** Layers × routed experts, each cell the group's mean probability; the group's own expert outlined. */
function heatmap(r: RoutingReport, g: Group): string {
  const L = r.layers;
  const R = r.routed;
  const cw = 38;
  const ch = L <= 16 ? 20 : Math.max(6, Math.floor(480 / L));
  const left = 34;
  const top = 20;
  const w = left + R * cw + 2;
  const h = top + L * ch + 2;
  const cells: string[] = [];
  for (let l = 0; l < L; l++) {
    const routes = r.perLayer[l]!.routes;
    for (let e = 0; e < R; e++) {
      const p = g.prompts.reduce((a, i) => a + routes[i]!.probabilities[e]!, 0) / g.prompts.length;
      const x = left + e * cw;
      const y = top + l * ch;
      cells.push(`<rect x="${x}" y="${y}" width="${cw - 1}" height="${ch - 1}" fill="${cellColor(p, 1 / R)}"><title>layer ${l}, ${esc(r.experts[e]!.label)}: ${p.toFixed(3)}</title></rect>`);
      if (ch >= 16) cells.push(`<text x="${x + cw / 2}" y="${y + ch / 2 + 4}" class="v${Math.abs(p - 1 / R) > 0.3 * Math.max(1 / R, 1 - 1 / R) ? ' inv' : ''}">${p.toFixed(2)}</text>`);
    }
    if (ch >= 10 || l % Math.ceil(12 / ch) === 0) cells.push(`<text x="${left - 4}" y="${top + l * ch + ch / 2 + 4}" class="ll">${l}</text>`);
  }
  const head = Array.from({ length: R }, (_, e) => `<text x="${left + e * cw + cw / 2}" y="14" class="hl${e === g.expert ? ' own' : ''}">E${e}</text>`).join('');
  const own = g.expert < R ? `<rect x="${left + g.expert * cw - 1}" y="${top - 1}" width="${cw + 1}" height="${L * ch + 1}" class="ownbox"/>` : '';
  return `<figure class="hm"><figcaption>${esc(g.title)} <span class="n">(${g.prompts.length} prompt${g.prompts.length === 1 ? '' : 's'})</span></figcaption><svg width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(g.title)}">${head}${cells.join('')}${own}</svg></figure>`;
}

function bars(p: number[], chosen: number[], own: number): string {
  return p
    .map((v, e) => `<span class="bar${chosen.includes(e) ? ' chosen' : ''}${e === own ? ' own' : ''}" title="E${e}: ${v.toFixed(4)}"><i style="width:${(100 * v).toFixed(1)}%"></i><b>${v.toFixed(3)}</b></span>`)
    .join('');
}

function layerRoutes(r: RoutingReport, lr: LayerReport, groups: Group[]): string {
  const rows: string[] = [];
  for (const g of groups) {
    g.prompts.forEach((i, j) => {
      const route = lr.routes[i]!;
      const ok = route.ownInTopK === null ? '' : route.ownInTopK ? '<span class="ok">✓</span>' : '<span class="bad">✗</span>';
      const shared = route.sharedGate !== undefined ? `<td class="num">${route.sharedGate.toFixed(3)}</td>` : '';
      rows.push(`<tr>${j === 0 ? `<th rowspan="${g.prompts.length}" class="grp">${esc(g.title)}</th>` : ''}<td class="prompt">${esc(r.prompts[i]!.text)}</td><td class="bars">${bars(route.probabilities, route.topK, g.kind === 'negative' ? -1 : g.expert)}</td><td>${route.topK.map((e) => `E${e}`).join(' ')}</td><td class="c">${ok}</td>${shared}</tr>`);
    });
  }
  const sharedHead = r.experts.length > r.routed ? '<th>shared gate</th>' : '';
  const head = `<tr><th>group</th><th>prompt</th><th>probabilities ${Array.from({ length: r.routed }, (_, e) => `E${e}`).join(' · ')}</th><th>top-${r.topK}</th><th>own</th>${sharedHead}</tr>`;
  const warn = lr.warnings.length ? `<ul class="warn">${lr.warnings.map((w) => `<li>${esc(w)}</li>`).join('')}</ul>` : '';
  return `<details id="layer-${lr.layer}"${r.layers <= 4 ? ' open' : ''}><summary>Layer ${lr.layer} · own expert in the top ${r.topK}: ${pct(lr.accuracy)}${lr.starving.length ? ` · starving ${lr.starving.map((e) => `E${e}`).join(', ')}` : ''}</summary>${warn}<table class="routes">${head}${rows.join('')}</table></details>`;
}

const STYLE = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#1b1f24;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dee4;padding-bottom:4px}
.meta{color:#57606a;margin:0 0 12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:8px 0 12px}
.card{border:1px solid #d8dee4;border-radius:6px;padding:8px 14px;min-width:140px}
.card b{display:block;font-size:22px}.card span{color:#57606a;font-size:12px}
.card.alert{border-color:#cf222e;background:#fff5f5}
table{border-collapse:collapse;margin:6px 0 10px}th,td{border:1px solid #d8dee4;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.num,td.c{text-align:right}td.c{text-align:center}
table.summary td.why{max-width:760px}table.summary ul{margin:0;padding-left:18px}
.ok{color:#1a7f37;font-weight:700}.bad{color:#cf222e;font-weight:700}
ul.warn{color:#9a6700;margin:4px 0;padding-left:18px}
.grid{display:flex;flex-wrap:wrap;gap:14px}
figure.hm{margin:0;border:1px solid #d8dee4;border-radius:6px;padding:6px 8px}
figcaption{font-size:12px;font-weight:600;margin-bottom:2px}figcaption .n{color:#57606a;font-weight:400}
svg text{font:11px system-ui,sans-serif;text-anchor:middle;fill:#1b1f24}
svg text.ll{text-anchor:end;fill:#57606a}svg text.hl.own{font-weight:700;fill:#cf222e}
svg text.v{font-size:10px}svg text.v.inv{fill:#fff}
svg rect.ownbox{fill:none;stroke:#cf222e;stroke-width:2}
.legend{display:flex;align-items:center;gap:6px;font-size:12px;color:#57606a;margin:6px 0}
.legend i{display:inline-block;width:120px;height:10px;background:linear-gradient(90deg,rgb(230,85,13),#fff)}.legend i.up{background:linear-gradient(90deg,#fff,rgb(8,48,107))}
details{margin:4px 0}summary{cursor:pointer;font-weight:600}
td.prompt{max-width:380px;word-break:break-word}th.grp{max-width:140px;font-weight:600}
td.bars{white-space:nowrap}
.bar{display:inline-block;position:relative;width:58px;height:16px;background:#f6f8fa;margin-right:3px;border:1px solid #d8dee4;vertical-align:middle}
.bar i{position:absolute;left:0;top:0;bottom:0;background:#9ecae1}.bar.chosen i{background:#3182bd}
.bar.own{border-color:#cf222e}
.bar b{position:relative;font-size:10px;font-weight:400;padding-left:3px}
code{background:#f6f8fa;padding:0 3px;border-radius:3px}
${MEASURED_STYLE}`;

/** routing.html: one self-contained page (inline CSS and SVG, no script, nothing fetched). */
export function renderHtml(r: RoutingReport): string {
  const s = r.summary;
  const groups = groupsOf(r);
  const E = (e: number) => `${esc(r.experts[e]!.label)} <span class="n">(${esc(r.experts[e]!.model)})</span>`;
  const starving = s.starving.length
    ? `<table class="summary"><tr><th>expert</th><th>starves in layers</th><th>why</th></tr>${s.starving
        .map((x) => `<tr><td>${E(x.expert)}</td><td>${x.layers.length === r.layers && r.layers > 1 ? `all (${layerRanges(x.layers)})` : layerRanges(x.layers)}</td><td class="why"><ul>${x.reasons.map((t) => `<li>${esc(t)}</li>`).join('')}</ul></td></tr>`)
        .join('')}</table>`
    : `<p>No expert starves: in every layer each routed expert is the first choice of at least one recipe prompt.</p>`;
  const pairs = s.pairs.length
    ? `<p>Nearly parallel gate rows (cos ≥ 0.99): ${s.pairs.map((p) => `${esc(r.experts[p.experts[0]]!.label)} and ${esc(r.experts[p.experts[1]]!.label)} in layers ${layerRanges(p.layers)} (min cos ${p.minCosine.toFixed(4)})`).join('; ')}.</p>`
    : '';
  const notes = [...s.notes, ...r.warnings].map((n) => `<li>${esc(n)}</li>`).join('');
  const cards = [
    `<div class="card"><b>${pct(s.accuracy)}</b><span>recipe prompts' last token in the top ${r.topK} (chance ${pct(r.topK / r.routed)})</span></div>`,
    `<div class="card"><b>${pct(s.heldOutAccuracy)}</b><span>held-out texts' last token in the top ${r.topK}</span></div>`,
    `<div class="card${s.starving.length ? ' alert' : ''}"><b>${s.starving.length} of ${r.routed}</b><span>experts starving somewhere</span></div>`,
    `<div class="card${s.degenerateLayers.length ? ' alert' : ''}"><b>${s.degenerateLayers.length} of ${r.layers}</b><span>layers with condition number &gt; 5</span></div>`,
  ].join('');
  const ranges = `<table><tr><th>layers</th>${s.byRange.map((x) => `<th>${x.from === x.to ? x.from : `${x.from}–${x.to}`}</th>`).join('')}</tr><tr><th>own in top ${r.topK}</th>${s.byRange.map((x) => `<td class="num">${pct(x.accuracy)}</td>`).join('')}</tr>${s.heldOutAccuracy !== null ? `<tr><th>held-out</th>${s.byRange.map((x) => `<td class="num">${pct(x.heldOutAccuracy)}</td>`).join('')}</tr>` : ''}</table>`;
  const perLayer = `<table><tr><th>layer</th><th>own in top ${r.topK}</th><th>held-out</th><th>load ${Array.from({ length: r.routed }, (_, e) => `E${e}`).join(' ')}</th><th>wins</th><th>condition number</th><th>σ min</th><th>min singular gap</th><th>warnings</th></tr>${r.perLayer
    .map((lr) => `<tr><td><a href="#layer-${lr.layer}">layer ${lr.layer}</a></td><td class="num">${pct(lr.accuracy)}</td><td class="num">${pct(lr.heldOutAccuracy)}</td><td>${lr.load.join(' ')}</td><td>${lr.wins.join(' ')}</td><td class="num">${num(lr.conditionNumber, 2)}</td><td class="num">${lr.singularValues.length ? num(lr.singularValues[lr.singularValues.length - 1]!) : '—'}</td><td class="num">${lr.minSingularGap === null ? '—' : num(lr.minSingularGap)}</td><td>${lr.warnings.map(esc).join('<br>')}</td></tr>`)
    .join('')}</table>`;
  const experts = `<table><tr><th>row</th><th>expert</th><th>source model</th><th>positive</th><th>negative</th><th>held-out</th></tr>${r.experts
    .map((e) => {
      const count = (set: string, role: string) => r.prompts.filter((p) => p.expert === e.index && p.set === set && p.role === role).length;
      return `<tr><td>E${e.index}</td><td>${esc(e.label)}${e.shared ? ' (shared, sigmoid gate)' : ''}</td><td>${esc(e.model)}</td><td class="num">${count('train', 'positive')}</td><td class="num">${count('train', 'negative')}</td><td class="num">${count('heldout', 'positive')}</td></tr>`;
    })
    .join('')}</table>`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Routing report: ${esc(r.name)}</title>
<style>${STYLE}</style>
</head>
<body>
<h1>Routing report: ${esc(r.name)}</h1>
<p class="meta">gate_mode <code>${esc(r.gateMode)}</code> · top-${r.topK} of ${r.routed} routed experts · ${r.layers} layers, hidden size ${r.hidden} · the routers as built, before any training</p>
${measuredSection(r)}
<h2 id="summary">Build check: the prompts the gates were built from</h2>
<p>How the gates were built, not what the model routes: each prompt's ${esc(r.state)} state in the <em>base</em> model, through the new gates (one state per prompt, not every token; a prompt counts when its own expert is anywhere in the top ${r.topK}).</p>
<div class="cards">${cards}</div>
${starving}
${pairs}
${ranges}
${notes ? `<ul class="warn">${notes}</ul>` : ''}
<h2 id="heatmaps">Heatmaps (build check)</h2>
<p>Mean router probability of each prompt group's base-model state: rows are layers, columns routed experts; the group's own expert is outlined. Blue: more than the uniform share, orange: less.</p>
<div class="legend">0 <i></i> uniform (1/${r.routed}) <i class="up"></i> 1</div>
<div class="grid">${groups.map((g) => heatmap(r, g)).join('')}</div>
<h2 id="layers">Layers</h2>
${perLayer}
<h2 id="experts">Experts</h2>
${experts}
<h2 id="routes">Routes per layer (build check)</h2>
${r.perLayer.map((lr) => layerRoutes(r, lr, groups)).join('\n')}
</body>
</html>
`;
}
