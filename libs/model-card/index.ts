import { stringify } from 'yaml';
import type { MergePlan, PlanModel, PlanTensor } from '../plan';
import type { Expert, GateMode, ModelReferenceInput, Recipe } from '../recipe';
import type { RoutingReport } from '../report';
import { dtypeToTorchName } from '../safetensors';
import { markdownCode, markdownText } from '../util';
import { routingSection } from './routing';

export interface ModelCardInput {
  plan: MergePlan;
  recipe: Recipe;
  /** The recipe exactly as written. */
  recipeText: string;
  gateMode: GateMode;
  /** Routing report written beside the card (routing.html): adds a Routing section. */
  routing?: RoutingReport;
}

export interface ParameterCounts {
  total: number;
  /** Parameters one token uses: everything but the routed experts it is not sent to. */
  activePerToken: number;
  routedExperts: number;
  sharedExperts: number;
  routers: number;
}


const elements = (t: PlanTensor) => t.shape.reduce((a, b) => a * b, 1);

/** Per-expert MLP tensor, classic layout: `…layers.L.(mlp|block_sparse_moe).experts.E.…`. */
const CLASSIC = /\.layers\.(\d+)\.[^.]+\.experts\.(\d+)\./;
/** Fused layout: `…layers.L.mlp.experts.gate_up_proj` / `.down_proj`, stacked over experts on dim 0. */
const FUSED = /\.layers\.(\d+)\.[^.]+\.experts\.(gate_up_proj|down_proj)$/;
const SHARED = /\.shared_experts?\./;
const ROUTER = /\.(gate|shared_expert_gate)\.weight$/;

/**
 * Counts over the plan's tensors. Active per token: per layer, the top-k largest routed experts' MLP
 * elements stand in for the ones a token is sent to (the experts of a merge all have one size).
 */
export function parameterCounts(plan: MergePlan, topK: number): ParameterCounts {
  let total = 0, shared = 0, routers = 0, routed = 0;
  const perLayer = new Map<number, number[]>();
  const addExpert = (layer: number, e: number, n: number) => {
    const row = perLayer.get(layer) ?? [];
    row[e] = (row[e] ?? 0) + n;
    perLayer.set(layer, row);
  };
  for (const t of plan.tensors) {
    const n = elements(t);
    total += n;
    const c = CLASSIC.exec(t.name);
    const f = FUSED.exec(t.name);
    if (c) {
      addExpert(Number(c[1]), Number(c[2]), n);
      routed += n;
    } else if (f) {
      const E = t.shape[0]!;
      for (let e = 0; e < E; e++) addExpert(Number(f[1]), e, n / E);
      routed += n;
    } else if (SHARED.test(t.name)) shared += n;
    else if (t.parts.some((p) => p.kind === 'gates') || ROUTER.test(t.name)) routers += n;
  }
  let unused = 0;
  for (const row of perLayer.values()) {
    const sizes = row.map((x) => x ?? 0).sort((a, b) => b - a);
    unused += sizes.slice(topK).reduce((a, b) => a + b, 0);
  }
  return { total, activePerToken: total - unused, routedExperts: routed, sharedExperts: shared, routers };
}

/** A Hub repo id: `name` or `org/name`, no `--` or `..` (the Hub refuses them). */
const REPO_ID = /^(?:[\w.-]+\/)?[\w.-]+$/;

/**
 * The Hub id of a source model, or null for a plain local folder: a model resolved from a Hub id lives in the
 * Hugging Face cache, as does a local folder that is a snapshot there (`…/models--org--name/snapshots/<rev>`).
 */
export function hubRepoId(m: PlanModel): string | null {
  const parts = m.dir.split(/[\\/]+/).filter(Boolean);
  const storage = parts[parts.length - 3];
  if (storage?.startsWith('models--') && parts[parts.length - 2] === 'snapshots') {
    const id = storage.slice('models--'.length).split('--').join('/');
    if (REPO_ID.test(id) && !id.includes('..')) return id;
  }
  return null;
}

function refText(r: ModelReferenceInput): string {
  if (typeof r === 'string') return r;
  return r.model.revision ? `${r.model.path}@${r.model.revision}` : r.model.path;
}

/** User text (prompts, model names, config values) in a table cell or list item: shown as written, never markup. */
const cell = markdownText;
const prompts = (list: string[] | null | undefined) => (list && list.length > 0 ? list.map((p) => `"${cell(p)}"`).join('<br>') : '—');

function human(n: number): string {
  for (const [div, unit] of [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'K']] as const) if (n >= div) return `${(n / div).toFixed(2)}${unit}`;
  return String(n);
}

/** A fence longer than any run of backticks in the text, so the recipe cannot close it early. */
function fence(text: string): string {
  const longest = Math.max(0, ...(text.match(/`+/g) ?? []).map((m) => m.length));
  return '`'.repeat(Math.max(3, longest + 1));
}

/** README.md for a merged model: front matter for the Hub, then what was merged and how. */
export function modelCard(input: ModelCardInput): string {
  const { plan, recipe, recipeText, gateMode } = input;
  const topK = recipe.experts_per_token;
  const counts = parameterCounts(plan, topK);
  const refs = [...new Set(plan.models.map((m) => m.ref))];
  // The Hub accepts only repo ids in base_model (and llama.cpp copies them into GGUF metadata as URLs):
  // local folders are named in the body instead, as the recipe names them: the card must not depend on (or
  // publish) where the models lie on this machine.
  const hubIds = [...new Set(plan.models.map(hubRepoId).filter((x): x is string => x !== null))];
  const localDirs = [...new Set(plan.models.filter((m) => hubRepoId(m) === null).map((m) => m.ref))];
  const front = stringify({ ...(hubIds.length > 0 ? { base_model: hubIds } : {}), tags: ['moe', 'frankenmoe', 'merge', 'mergekit', 'moe-forge'], library_name: 'transformers' }).trimEnd();
  const rows = (kind: string, list: Expert[]) =>
    list.map((e, i) => `| ${kind} ${i} | ${cell(refText(e.source_model))} | ${prompts(e.positive_prompts)} | ${prompts(e.negative_prompts)} |`);
  const shared = recipe.shared_experts ?? [];
  const f = fence(recipeText);
  const lines = [
    '---',
    front,
    '---',
    '',
    `# ${plan.architecture} merge`,
    '',
    `A Mixture-of-Experts model built with moe-forge (a TypeScript mergekit-moe) from ${refs.length} source model${refs.length === 1 ? '' : 's'}.`,
    '',
    `- Architecture: ${plan.architecture} (${cell(String((plan.config.architectures as string[] | undefined)?.[0] ?? ''))}), ${plan.layout} layout`,
    `- Base model: ${cell(refText(recipe.base_model))}`,
    `- Experts: ${recipe.experts.length} routed, ${topK} per token${shared.length > 0 ? `, ${shared.length} shared` : ''}`,
    `- Gate mode: ${gateMode}`,
    `- Output dtype: ${plan.outDtype === null ? 'as the sources' : dtypeToTorchName(plan.outDtype)}`,
    ...(localDirs.length > 0 ? [`- Local source models (not on the Hub): ${localDirs.map(markdownCode).join(', ')}`] : []),
    '',
    '## Experts',
    '',
    '| expert | source model | positive prompts | negative prompts |',
    '|---|---|---|---|',
    ...rows('routed', recipe.experts),
    ...rows('shared', shared),
    '',
    '## Parameters',
    '',
    `- Total: ${counts.total} (${human(counts.total)})`,
    `- Active per token: ${counts.activePerToken} (${human(counts.activePerToken)})`,
    `- Routed experts: ${counts.routedExperts}; shared experts: ${counts.sharedExperts}; routers: ${counts.routers}`,
    '',
    ...(input.routing ? [routingSection(input.routing)] : []),
    '## Recipe',
    '',
    f + 'yaml',
    recipeText.replace(/\n$/, ''),
    f,
    '',
  ];
  return lines.join('\n');
}
