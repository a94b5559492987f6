/** The README.md model card, built from the plan of a real merge. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { hubRepoId, modelCard, parameterCounts } from '../../libs/model-card';
import { routingSection } from '../../libs/model-card/routing';
import type { RoutingReport } from '../../libs/report/types';
import { readRecipe } from '../../libs/recipe/parse';
import { loadMergeContext, recipeModelRefs } from '../../libs/stages/context';
import { runAssemble } from '../../libs/stages/assemble';
import type { MergePlan } from '../../libs/plan/types';
import { recipeYaml, tinyFamilyModel, TINY_SIZE, type ExpertYaml, type Family } from '../helpers/arch-models';
import { tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-card-');
const { layers: L, hidden: H, intermediate: I } = TINY_SIZE;

async function planOf(name: string, family: Family, experts: ExpertYaml[], shared: ExpertYaml[] | undefined, topK: number, layout?: 'fused') {
  const file = join(dir, `${name}.yml`);
  const text = recipeYaml({ base: await tinyFamilyModel(join(dir, `${name}-base`), family, 1), experts, shared, gate: 'cheap_embed', topK });
  writeFileSync(file, text);
  const parsed = await readRecipe(file);
  const models = recipeModelRefs(parsed, dir).map((m) => ({ key: m.key, ref: m.ref, dir: m.localDir!, source: 'local' as const, revision: null }));
  const merge = await loadMergeContext(parsed, models, { modelBaseDir: dir, layout, allowIdenticalModels: true });
  const plan = await runAssemble(merge, join(dir, `${name}-plan`), { maxShardBytes: 0 });
  return { plan, parsed };
}

const elements = (plan: MergePlan) => plan.tensors.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);

test('DeepSeek card: front matter, experts table, recipe, and parameter counts from the plan', async () => {
  const a = await tinyFamilyModel(join(dir, 'ds-a'), 'llama', 2);
  const b = await tinyFamilyModel(join(dir, 'ds-b'), 'llama', 3);
  const c = await tinyFamilyModel(join(dir, 'ds-c'), 'llama', 4);
  const { plan, parsed } = await planOf('ds', 'llama', [{ model: a, prompts: ['math | sums'] }, { model: b, prompts: ['code'], negative: ['prose'] }, { model: c, prompts: ['poems'] }], [{ model: c, residual: 0.1 }], 2);
  const card = modelCard({ plan, recipe: parsed.recipe, recipeText: parsed.text, gateMode: parsed.recipe.gate_mode });

  const m = /^---\n([\s\S]*?)\n---\n/.exec(card);
  assert.ok(m, 'front matter');
  const front = parse(m[1]!);
  // Local folders only: no base_model (the Hub accepts repo ids only); the folders are named in the body.
  assert.equal(front.base_model, undefined);
  assert.ok(!m[1]!.includes(dir), 'no local path in the front matter');
  for (const x of plan.models) assert.ok(card.includes(`\`${x.dir}\``), `${x.dir} named in the body`);
  assert.deepEqual(front.tags, ['moe', 'frankenmoe', 'merge', 'mergekit', 'moe-forge']);
  assert.equal(front.library_name, 'transformers');

  assert.match(card, /DeepSeek MoE/);
  assert.match(card, /Experts: 3 routed, 2 per token, 1 shared/);
  assert.match(card, /Gate mode: cheap_embed/);
  assert.ok(card.includes(`| routed 0 | ${a} | "math \\| sums" | — |`), 'a pipe in a prompt is escaped');
  assert.ok(card.includes(`| routed 1 | ${b} | "code" | "prose" |`));
  assert.ok(card.includes(`| shared 0 | ${c} | — | — |`));
  assert.ok(card.includes('```yaml\n' + parsed.text.replace(/\n$/, '') + '\n```\n'), 'the recipe itself');

  const total = elements(plan);
  const perExpert = L * 3 * I * H;
  const active = total - (3 - 2) * perExpert; // one routed expert per layer is not used by a token
  assert.match(card, new RegExp(`Total: ${total} \\(`));
  assert.match(card, new RegExp(`Active per token: ${active} \\(`));
  const counts = parameterCounts(plan, 2);
  assert.deepEqual(counts, { total, activePerToken: active, routedExperts: 3 * perExpert, sharedExperts: perExpert, routers: L * 3 * H });
});

test('Qwen MoE and fused Qwen3 MoE counts: shared expert and its gate always active, fused stacks split per expert', async () => {
  const a = await tinyFamilyModel(join(dir, 'q-a'), 'qwen2', 2);
  const q = await planOf('q', 'qwen2', [{ model: a, prompts: ['x'] }, { model: a, prompts: ['y'] }], [{ model: a, prompts: ['z'] }], 1);
  const qTotal = elements(q.plan);
  const perExpert = L * 3 * I * H;
  assert.deepEqual(parameterCounts(q.plan, 1), { total: qTotal, activePerToken: qTotal - perExpert, routedExperts: 2 * perExpert, sharedExperts: perExpert, routers: L * 3 * H });

  const r = await tinyFamilyModel(join(dir, 'r-a'), 'qwen3', 2);
  const f = await planOf('r', 'qwen3', [{ model: r, prompts: ['x'] }, { model: r, prompts: ['y'] }, { model: r, prompts: ['z'] }, { model: r, prompts: ['w'] }], undefined, 2, 'fused');
  assert.ok(f.plan.tensors.some((t) => t.name.endsWith('mlp.experts.gate_up_proj')));
  const fTotal = elements(f.plan);
  assert.deepEqual(parameterCounts(f.plan, 2), { total: fTotal, activePerToken: fTotal - 2 * perExpert, routedExperts: 4 * perExpert, sharedExperts: 0, routers: L * 4 * H });
  const card = modelCard({ plan: f.plan, recipe: f.parsed.recipe, recipeText: f.parsed.text, gateMode: 'cheap_embed' });
  assert.match(card, /Qwen3 MoE/);
  assert.match(card, /fused layout/);
  assert.equal(parse(/^---\n([\s\S]*?)\n---\n/.exec(card)![1]!).base_model, undefined);
});

test('front matter base_model: a snapshot folder in the Hugging Face cache is listed by its Hub id, a plain folder is not', async () => {
  const snap = join(dir, 'hf', 'hub', 'models--acme--tiny-qwen3', 'snapshots', 'a'.repeat(40));
  await tinyFamilyModel(snap, 'qwen3', 5);
  const local = await tinyFamilyModel(join(dir, 'plain-qwen3'), 'qwen3', 6);
  const { plan, parsed } = await planOf('snap', 'qwen3', [{ model: snap, prompts: ['x'] }, { model: local, prompts: ['y'] }], undefined, 1);
  const card = modelCard({ plan, recipe: parsed.recipe, recipeText: parsed.text, gateMode: 'cheap_embed' });
  const m = /^---\n([\s\S]*?)\n---\n/.exec(card)!;
  assert.deepEqual(parse(m[1]!).base_model, ['acme/tiny-qwen3']);
  assert.ok(!m[1]!.includes(dir), 'no local path in the front matter');
  assert.ok(card.includes(`\`${local}\``) && card.includes(`\`${join(dir, 'snap-base')}\``), 'local folders named in the body');
  assert.ok(!card.slice(m[0].length).includes(`\`${snap}\``), 'the snapshot is not called a local folder');
  // A model resolved from a Hub id lives in the cache too; a name the Hub would refuse is not listed.
  assert.equal(hubRepoId({ key: 'hub:gpt2@main', ref: 'gpt2', dir: join(dir, 'models--gpt2', 'snapshots', 'b'.repeat(40)) }), 'gpt2');
  assert.equal(hubRepoId({ key: 'local:x', ref: 'x', dir: join(dir, 'models--a--b--c', 'snapshots', 'c'.repeat(40)) }), null);
  assert.equal(hubRepoId({ key: 'local:x', ref: 'x', dir: join(dir, 'models--org--name', 'other', 'c'.repeat(40)) }), null);
});

test('a recipe holding backticks gets a longer fence', async () => {
  const a = await tinyFamilyModel(join(dir, 'bt-a'), 'llama', 2);
  const b = await tinyFamilyModel(join(dir, 'bt-b'), 'llama', 3);
  const { plan, parsed } = await planOf('bt', 'llama', [{ model: a, prompts: ['```code```'] }, { model: b, prompts: ['text'] }], undefined, 1);
  const card = modelCard({ plan, recipe: parsed.recipe, recipeText: parsed.text, gateMode: 'cheap_embed' });
  assert.ok(card.includes('````yaml\n' + parsed.text.replace(/\n$/, '') + '\n````\n'));
});

test('prompts, model names and config values reach the card as text, never as HTML, Markdown links or table structure', async () => {
  const a = await tinyFamilyModel(join(dir, 'x-<b>bold</b>'), 'llama', 2);
  const b = await tinyFamilyModel(join(dir, 'x-tick`a`|pipe'), 'llama', 3);
  const bad = ['<img src=https://example.com/p.png>', 'a | b', 'run `rm -rf` now', 'two\nlines\n\n# heading', '![t](https://example.com/t.png) & &lt;'];
  const { plan, parsed } = await planOf('inj', 'llama', [{ model: a, prompts: bad }, { model: b, prompts: ['text'], negative: ['<script>alert(1)</script>'] }], undefined, 1);
  plan.config.architectures = ['<iframe src=https://example.com>'];
  const card = modelCard({ plan, recipe: parsed.recipe, recipeText: parsed.text, gateMode: 'cheap_embed' });
  // Code spans show their text as is (a folder named <b> stays "<b>"): checked apart, below.
  const local = card.split('\n').find((l) => l.startsWith('- Local source models'))!;
  const body = card.slice(0, card.indexOf('## Recipe')).replace(local, '');
  // No tag but the card's own <br>, no image or link, no entity of the user's.
  assert.deepEqual(body.match(/<[a-z/!][^>]*>?/gi)?.filter((t) => t !== '<br>') ?? [], [], body);
  assert.ok(!/!\[|(?<!\\)\]\(/.test(body), 'no Markdown image or link');
  assert.ok(body.includes('"&lt;img src=https://example.com/p.png&gt;"'));
  assert.ok(body.includes('"a \\| b"') && body.includes('"run \\`rm -rf\\` now"') && body.includes('"two lines  # heading"'));
  assert.ok(body.includes('"!\\[t\\](https://example.com/t.png) &amp; &amp;lt;"'));
  assert.ok(body.includes('(&lt;iframe src=https://example.com&gt;)'));
  // Each experts row is one line of exactly five cell borders: nothing split a cell or the row.
  const rows = body.split('\n').filter((l) => l.startsWith('| routed '));
  assert.equal(rows.length, 2);
  for (const r of rows) assert.equal(r.replace(/\\\|/g, '').split('|').length, 6, r);
  // Local folders in code spans that their backticks cannot close early.
  assert.equal(local, `- Local source models (not on the Hub): \`${join(dir, 'inj-base')}\`, \`${a}\`, \`\`${b}\`\``);
  assert.ok(body.includes(`- Base model: ${join(dir, 'inj-base')}`));
});

test('the routing section quotes prompts and model names as text too', () => {
  const agreement = { tokens: 4, top1: 0.5, topK: 1, margin: 0.1, texts: 2, textTop1: 0.5, textTopK: 1 };
  const load = { load: [0.5, 0.5], maxVio: 0, entropy: 1, starving: [], dominating: [] };
  const report = {
    topK: 1,
    routed: 2,
    layers: 2,
    experts: [
      { index: 0, label: 'expert 0', model: 'models/<b>a</b>', shared: false },
      { index: 1, label: 'expert 1', model: 'models/b|c', shared: false },
    ],
    measured: { headline: 'train', chance: { top1: 0.5, topK: 1 }, overall: { heldout: null, train: agreement, load }, perLayer: [0, 1].map((layer) => ({ layer, heldout: null, train: agreement, load, pairs: [] })), prompts: [], pairs: [] },
    advice: ['expert 0 (models/<b>a</b>) starves: its texts go mostly to "<img src=https://example.com/p.png>" "a | b"', 'note with `tick` and\nnew line'],
  } as unknown as RoutingReport;
  const section = routingSection(report);
  assert.ok(section.includes('- expert 0 (models/&lt;b&gt;a&lt;/b&gt;) starves: its texts go mostly to "&lt;img src=https://example.com/p.png&gt;" "a \\| b"'), section);
  assert.ok(section.includes('- note with \\`tick\\` and new line'), section);
});
