/** The page's headline: what the merged model routes (routing.json `measured`), drawn so the winner and margin show. */
import { escapeHtml as esc } from '../util';
import { layerRanges } from './layers';
import type { Agreement, RoutingReport } from './types';

const pct = (x: number | null | undefined) => (x === null || x === undefined ? '—' : `${(100 * x).toFixed(0)}%`);

/** Eight colours told apart by most eyes; experts beyond them repeat with a pattern of their index. */
const PALETTE = ['#4477aa', '#ee6677', '#228833', '#ccbb44', '#66ccee', '#aa3377', '#bbbbbb', '#000000'];
export const expertColor = (e: number) => PALETTE[e % PALETTE.length]!;

/** `E0 · model-name`: the expert's row and the recipe's model for it. */
export function expertName(r: RoutingReport, e: number): string {
  const x = r.experts[e]!;
  const short = x.model.split('/').filter(Boolean).pop() ?? x.model;
  return `E${e} · ${short}`;
}

/** A bar of the value against its chance level: the bar's fill, a tick at chance, the figure beside. */
function vsChance(v: number | null | undefined, chance: number, label: string): string {
  if (v === null || v === undefined) return `<span class="vc">—</span>`;
  const cls = v >= 1.25 * chance ? 'good' : v > chance ? 'meh' : 'bad';
  return `<span class="vc ${cls}" title="${esc(label)}: ${pct(v)} (chance ${pct(chance)})"><span class="vcbar"><i style="width:${(100 * v).toFixed(1)}%"></i><u style="left:${(100 * chance).toFixed(1)}%"></u></span><b>${pct(v)}</b></span>`;
}

/** A margin in [−1, 1] as a bar from the centre: right (green) when the intended expert leads, left (red) when another does. */
function marginBar(m: number | null | undefined): string {
  if (m === null || m === undefined) return '—';
  const w = Math.min(50, Math.abs(m) * 50);
  return `<span class="mg" title="margin ${m.toFixed(3)}: p(intended) − p(best other)"><span class="mgbar"><i class="${m >= 0 ? 'pos' : 'neg'}" style="${m >= 0 ? 'left:50%' : `left:${50 - w}%`};width:${w.toFixed(1)}%"></i></span><b>${m >= 0 ? '+' : ''}${m.toFixed(2)}</b></span>`;
}

function loadBar(r: RoutingReport, load: number[]): string {
  return `<span class="ld">${load.map((s, e) => `<i style="width:${(100 * s).toFixed(1)}%;background:${expertColor(e)}" title="${esc(expertName(r, e))}: ${pct(s)}"></i>`).join('')}</span>`;
}

function agreementRow(title: string, a: Agreement | null, r: RoutingReport): string {
  const m = r.measured;
  return `<tr><th>${title}</th><td>${vsChance(a?.top1, m.chance.top1, 'tokens first to the intended expert')}</td><td>${vsChance(a?.topK, m.chance.topK, `tokens with the intended expert in the top ${r.topK}`)}</td><td>${vsChance(a?.textTop1, m.chance.top1, 'texts won by the intended expert')}</td><td>${vsChance(a?.textTopK, m.chance.topK, `texts with the intended expert among their top ${r.topK}`)}</td><td>${marginBar(a?.margin)}</td></tr>`;
}

export function measuredSection(r: RoutingReport): string {
  const m = r.measured;
  const on = m.headline === 'heldout' ? 'held-out texts' : "the recipe's own prompts (training fit)";
  const head = m.overall[m.headline];
  const load = m.overall.load;
  const cards = [
    `<div class="card${head && head.top1 < 1.25 * m.chance.top1 ? ' alert' : ''}"><b>${pct(head?.top1)}</b><span>of tokens go first to their intended expert · chance ${pct(m.chance.top1)}</span></div>`,
    `<div class="card"><b>${pct(head?.topK)}</b><span>have it within the top ${r.topK} · chance ${pct(m.chance.topK)}</span></div>`,
    `<div class="card${head && head.margin < 0 ? ' alert' : ''}"><b>${head ? `${head.margin >= 0 ? '+' : ''}${head.margin.toFixed(2)}` : '—'}</b><span>mean margin p(intended) − p(best other)</span></div>`,
    `<div class="card${load.maxVio > 1 ? ' alert' : ''}"><b>${load.maxVio.toFixed(2)}</b><span>MaxVio (max load / mean − 1) · entropy ${load.entropy.toFixed(2)}</span></div>`,
  ].join('');
  const table = `<table class="agree"><tr><th></th><th>tokens: top 1</th><th>tokens: top ${r.topK}</th><th>texts: winner</th><th>texts: top ${r.topK}</th><th>margin</th></tr>${
    m.headline === 'heldout' ? agreementRow('held-out texts', m.overall.heldout, r) : ''
  }${agreementRow(m.headline === 'heldout' ? 'recipe prompts (training fit)' : 'recipe prompts (training fit: no held-out texts)', m.overall.train, r)}</table>`;
  const layers = `<table class="agree"><tr><th>layer</th><th>tokens: top 1</th><th>tokens: top ${r.topK}</th><th>texts: winner</th><th>margin</th><th>load per expert</th><th>MaxVio</th><th>entropy</th><th>rows</th></tr>${m.perLayer
    .map((lr) => {
      const a = lr[m.headline];
      const pairs = lr.pairs.map((p) => `${p.kind === 'identical' ? '≈' : '−'} E${p.experts[0]}/E${p.experts[1]} (cos ${p.cosine.toFixed(3)})`).join(', ');
      return `<tr><td>${lr.layer}</td><td>${vsChance(a?.top1, m.chance.top1, 'top 1')}</td><td>${vsChance(a?.topK, m.chance.topK, `top ${r.topK}`)}</td><td>${vsChance(a?.textTop1, m.chance.top1, 'texts')}</td><td>${marginBar(a?.margin)}</td><td>${loadBar(r, lr.load.load)}</td><td class="num">${lr.load.maxVio.toFixed(2)}</td><td class="num">${lr.load.entropy.toFixed(2)}</td><td>${esc(pairs)}</td></tr>`;
    })
    .join('')}</table>`;
  // Per prompt across the layers: each cell the expert that wins most of its tokens (its colour), the share it
  // wins, and a mark when that is the intended expert.
  const shown = m.prompts.filter((v) => r.prompts[v.prompt]!.set === m.headline || m.headline === 'heldout');
  const promptRows = shown
    .map((v) => {
      const p = r.prompts[v.prompt]!;
      const own = p.role === 'positive' && p.expert < r.routed ? p.expert : null;
      const cells = v.layers
        .map((lv, l) => {
          const ok = own === null ? '' : lv.winner === own ? ' ok' : ' miss';
          return `<td class="pw${ok}" style="background:${expertColor(lv.winner)}" title="layer ${l}: ${esc(expertName(r, lv.winner))} wins ${pct(lv.winnerShare)} of the tokens${own !== null ? `; intended ${esc(expertName(r, own))} first on ${pct(lv.ownShare)}, margin ${lv.margin!.toFixed(2)}` : ''}">E${lv.winner}<small>${pct(lv.winnerShare)}</small></td>`;
        })
        .join('');
      const set = p.set === 'heldout' ? 'held-out' : p.role === 'negative' ? 'negative' : 'recipe';
      return `<tr><td class="prompt">${esc(p.text)}</td><td>${set}</td><td>${own === null ? '—' : `<span class="sw" style="background:${expertColor(own)}"></span>${esc(expertName(r, own))}`}</td><td class="num">${v.tokens}</td>${cells}</tr>`;
    })
    .join('');
  const promptTable = `<table class="prompts"><tr><th>text</th><th>set</th><th>intended</th><th>tokens</th>${Array.from({ length: r.layers }, (_, l) => `<th>L${l}</th>`).join('')}</tr>${promptRows}</table>`;
  const legend = `<div class="legend">${r.experts.filter((e) => !e.shared).map((e) => `<span><span class="sw" style="background:${expertColor(e.index)}"></span>${esc(expertName(r, e.index))} <span class="n">(${esc(e.model)})</span></span>`).join(' ')}</div>`;
  const advice = r.advice.length ? `<ul class="warn">${r.advice.map((a) => `<li>${esc(a)}</li>`).join('')}</ul>` : '';
  const pairs = m.pairs.length ? `<p>Router rows: ${m.pairs.map((p) => `${esc(expertName(r, p.experts[0]))} and ${esc(expertName(r, p.experts[1]))} ${p.kind === 'identical' ? 'nearly identical' : 'exactly opposite'} in layers ${layerRanges(p.layers)} (cos ${p.cosine.toFixed(4)})`).join('; ')}.</p>` : '';
  return `<h2 id="merged">What the merged model routes</h2>
<p>Every token of every text through the merged model's own layers (its MoE blocks with these routers, the output dtype's weights, its config), on ${on}. Agreement is with the intended expert: the one whose prompts hold the text. Bars show the figure; the tick is chance (1/${r.routed} for the first choice, ${r.topK}/${r.routed} within the top ${r.topK}).</p>
<div class="cards">${cards}</div>
${advice}
${table}
${pairs}
<h3>Per layer</h3>
${layers}
<h3 id="per-prompt">Per text across layers</h3>
<p>Each cell: the expert that wins most of the text's tokens in that layer and the share it wins; a green edge when it is the intended expert, red when another wins.</p>
${legend}
${promptTable}`;
}

export const MEASURED_STYLE = `
h3{font-size:15px;margin:18px 0 6px}
.vc{display:inline-flex;align-items:center;gap:6px;white-space:nowrap}.vc b{font-weight:600;min-width:34px}
.vcbar{position:relative;display:inline-block;width:90px;height:10px;background:#f6f8fa;border:1px solid #d8dee4}
.vcbar i{position:absolute;left:0;top:0;bottom:0;background:#8c959f}.vc.good .vcbar i{background:#1a7f37}.vc.bad .vcbar i{background:#cf222e}.vc.meh .vcbar i{background:#bf8700}
.vcbar u{position:absolute;top:-3px;bottom:-3px;width:2px;background:#1b1f24;text-decoration:none}
.mg{display:inline-flex;align-items:center;gap:6px}.mgbar{position:relative;display:inline-block;width:90px;height:10px;background:#f6f8fa;border:1px solid #d8dee4}
.mgbar i{position:absolute;top:0;bottom:0}.mgbar i.pos{background:#1a7f37}.mgbar i.neg{background:#cf222e}
.mgbar::after{content:"";position:absolute;left:50%;top:-3px;bottom:-3px;width:1px;background:#1b1f24}
.ld{display:inline-flex;width:140px;height:12px;border:1px solid #d8dee4}.ld i{display:block;height:100%}
table.prompts td.pw{color:#fff;text-align:center;font-weight:600;min-width:38px;border:3px solid #fff}
table.prompts td.pw small{display:block;font-weight:400;font-size:10px}
table.prompts td.pw.ok{border-color:#1a7f37}table.prompts td.pw.miss{border-color:#cf222e}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.legend span{margin-right:10px}
`;
