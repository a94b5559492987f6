/** The routing report on the tiny fixture models: numbers recomputed independently, starvation, the page. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readRecipe } from '../../libs/recipe/parse';
import { runFetch } from '../../libs/stages/fetch';
import { runEmbedPrompts } from '../../libs/stages/embed-prompts';
import { gatesForAssembly, runBuildGates } from '../../libs/stages/build-gates';
import { runAssemble } from '../../libs/stages/assemble';
import { mergedRouterLogits, runReport } from '../../libs/stages/report';
import { SafetensorsWeights, readTensorBytes, decodeFloats } from '../../libs/safetensors';
import type { RoutingReport } from '../../libs/report';
import { checkHtml } from '../helpers/html-check';
import { tempDir, TINY } from '../helpers/tmp';

const dir = tempDir('moe-forge-report-');
const cacheDir = join(dir, 'cache');

const recipeText = (mode: string, experts: string) => `base_model: ${TINY('a')}
gate_mode: ${mode}
experts_per_token: 2
experts:
${experts}`;

const FOUR = `  - source_model: ${TINY('a')}
    positive_prompts: ["How do I merge two models with mergekit?", "Explain the configuration file format"]
  - source_model: ${TINY('b')}
    positive_prompts: ["Write a python function that adds numbers", "The tensor shape is wrong in layer two!"]
    negative_prompts: ["The weather is nice today."]
  - source_model: ${TINY('c')}
    positive_prompts: ["Once upon a time there was a model <script>alert(1)</script> & more"]
  - source_model: ${TINY('b')}
    positive_prompts: ["Solve this equation for x"]
`;

async function stages(name: string, text: string, evalPrompts?: string) {
  const file = join(dir, `${name}.yml`);
  writeFileSync(file, text);
  const work = join(dir, name);
  const { merge } = await runFetch(await readRecipe(file), join(work, 'fetch'), { cacheDir, modelBaseDir: dir });
  await runEmbedPrompts(merge, join(work, 'embed-prompts'), { cacheDir });
  await runBuildGates(merge, join(work, 'embed-prompts'), join(work, 'build-gates'));
  const { gates, warnings } = await gatesForAssembly(merge, join(work, 'build-gates'));
  await runAssemble(merge, join(work, 'assemble-experts'), { maxShardBytes: 5e9, extraWarnings: warnings, gates });
  const out = await runReport(merge, join(work, 'embed-prompts'), join(work, 'build-gates'), join(work, 'assemble-experts'), join(work, 'report'), { name, cacheDir, evalPrompts });
  const report = JSON.parse(readFileSync(join(work, 'report', 'routing.json'), 'utf8')) as RoutingReport;
  return { work, merge, report, html: readFileSync(join(work, 'report', 'routing.html'), 'utf8'), stats: out.stats };
}

const cacheStats = (s: { computed: number; fromCache: number }) => ({ computed: s.computed, fromCache: s.fromCache });

async function tensors(file: string): Promise<Map<string, Float32Array>> {
  const w = await SafetensorsWeights.openFiles(join(file, '..'), [file]);
  const out = new Map<string, Float32Array>();
  for (const name of w.names()) out.set(name, decodeFloats(await readTensorBytes(w.get(name)), 'F32'));
  return out;
}

for (const mode of ['hidden', 'hidden_avg', 'cheap_embed'] as const) {
  test(`${mode}: routing.json probabilities equal a float64 recomputation from the stage outputs (1e-6)`, async () => {
    const { work, report } = await stages(`recompute-${mode}`, recipeText(mode, FOUR));
    const gates = (await tensors(join(work, 'build-gates', 'gates.safetensors'))).get('gates')!;
    const states = await tensors(join(work, 'embed-prompts', 'prompt-states.safetensors'));
    const index = JSON.parse(readFileSync(join(work, 'embed-prompts', 'prompt-states.json'), 'utf8')) as { prompts: { text: string; count: number }[] };
    const [L, N, H] = [2, 4, 64];
    assert.equal(report.layers, L);
    assert.equal(report.perLayer.length, L);
    let checked = 0;
    for (let l = 0; l < L; l++) {
      for (const route of report.perLayer[l]!.routes) {
        const p = report.prompts[route.prompt]!;
        const i = index.prompts.findIndex((x) => x.text === p.text);
        // The state each mode's gates were built from: last token, token mean, embedding sum (one row for all layers).
        const x = new Float64Array(H);
        for (let k = 0; k < H; k++) {
          if (mode === 'hidden') x[k] = states.get(`p${i}.last`)![l * H + k]!;
          else if (mode === 'hidden_avg') x[k] = states.get(`p${i}.sum`)![l * H + k]! / index.prompts[i]!.count;
          else x[k] = states.get(`p${i}.sum`)![k]!;
        }
        const logits = Array.from({ length: N }, (_, e) => {
          let s = 0;
          for (let k = 0; k < H; k++) s += gates[(l * N + e) * H + k]! * x[k]!;
          return s;
        });
        const m = Math.max(...logits);
        const z = logits.reduce((a, v) => a + Math.exp(v - m), 0);
        logits.forEach((v, e) => assert.ok(Math.abs(Math.exp(v - m) / z - route.probabilities[e]!) < 1e-6, `${mode} layer ${l} prompt ${route.prompt} expert ${e}`));
        const order = [...route.probabilities.keys()].sort((a, b) => route.probabilities[b]! - route.probabilities[a]! || a - b);
        assert.deepEqual(route.topK, order.slice(0, 2));
        if (p.role === 'positive') assert.equal(route.ownInTopK, route.topK.includes(p.expert));
        else assert.equal(route.ownInTopK, null);
        checked++;
      }
      const lr = report.perLayer[l]!;
      const own = lr.routes.filter((r) => r.ownInTopK !== null);
      assert.equal(lr.accuracy, own.filter((r) => r.ownInTopK).length / own.length);
      // Load: distinct positive prompts having each expert in their top-k.
      const distinct = new Map(lr.routes.filter((r) => report.prompts[r.prompt]!.role === 'positive').map((r) => [report.prompts[r.prompt]!.text, r.topK]));
      assert.deepEqual(lr.load, [0, 1, 2, 3].map((e) => [...distinct.values()].filter((t) => t.includes(e)).length));
      assert.ok(lr.conditionNumber !== null && lr.conditionNumber >= 1);
      assert.equal(lr.singularValues.length, 4);
      assert.ok(lr.minSingularGap !== null && lr.minSingularGap >= 0);
    }
    assert.equal(checked, 2 * 7);
    const gatesJson = JSON.parse(readFileSync(join(work, 'build-gates', 'gates.json'), 'utf8'));
    assert.deepEqual(report.perLayer.map((x) => x.conditionNumber), gatesJson.conditionNumbers, 'the condition numbers the degenerate-routing check uses');
  });
}

test('two experts with the same prompts: both starve in every layer, and the report names the pair', async () => {
  const same = `  - source_model: ${TINY('a')}
    positive_prompts: ["Write a python function", "Fix this unit test"]
  - source_model: ${TINY('b')}
    positive_prompts: ["Write a python function", "Fix this unit test"]
  - source_model: ${TINY('c')}
    positive_prompts: ["Once upon a time", "Write a sonnet about rain"]
`;
  for (const mode of ['hidden', 'cheap_embed']) {
    const { report, html } = await stages(`same-${mode}`, recipeText(mode, same));
    for (const lr of report.perLayer) {
      assert.deepEqual(lr.starving, [0, 1], `${mode} layer ${lr.layer}`);
      assert.deepEqual(lr.parallel.map((p) => p.experts), [[0, 1]]);
      assert.equal(lr.reasons['0']![0]!.kind, 'parallel');
      assert.equal(lr.reasons['0']![0]!.partner, 1);
      assert.equal(lr.reasons['1']![0]!.partner, 0);
    }
    assert.deepEqual(report.summary.starving.map((s) => [s.expert, s.layers]), [[0, [0, 1]], [1, [0, 1]]]);
    assert.match(report.summary.starving[0]!.reasons[0]!, /nearly parallel to expert 1's \(they have the same positive prompts\).*every layer/);
    assert.match(report.summary.starving[1]!.reasons[0]!, /nearly parallel to expert 0's/);
    assert.deepEqual(report.summary.pairs.map((p) => [p.experts, p.layers]), [[[0, 1], [0, 1]]]);
    assert.match(html, /expert 0 <span class="n">[^<]*<\/span><\/td><td>all \(0–1\)<\/td>/);
    // What to do about it, from the merged model's routers: the pair is named once, with the cause and the fix.
    const pair = report.advice.filter((a) => /^expert 0 \([^)]*tiny-a\) and expert 1 \([^)]*tiny-b\): router rows nearly identical in every layer/.test(a));
    assert.equal(pair.length, 1, report.advice.join('\n'));
    assert.match(pair[0]!, /so the router cannot tell them apart; they have the same positive prompts: give each its own\.$/);
    assert.deepEqual(report.measured.pairs.map((p) => [p.kind, p.experts, p.layers]), [['identical', [0, 1], [0, 1]]]);
  }
});

test('the report needs assemble-experts: without its plan it says so in one line', async () => {
  const file = join(dir, 'noplan.yml');
  writeFileSync(file, recipeText('cheap_embed', FOUR));
  const work = join(dir, 'noplan');
  const { merge } = await runFetch(await readRecipe(file), join(work, 'fetch'), { cacheDir, modelBaseDir: dir });
  await runEmbedPrompts(merge, join(work, 'embed-prompts'), { cacheDir });
  await runBuildGates(merge, join(work, 'embed-prompts'), join(work, 'build-gates'));
  await assert.rejects(runReport(merge, join(work, 'embed-prompts'), join(work, 'build-gates'), join(work, 'assemble-experts'), join(work, 'report'), { name: 'noplan', cacheDir }), (e: Error) => {
    assert.equal(e.message, `${join(work, 'assemble-experts', 'plan.json')}: cannot read the assemble-experts stage's output (ENOENT); run the assemble-experts stage first`);
    return true;
  });
});

test('a negative prompt that cancels a positive one is named as the reason', async () => {
  const cancel = `  - source_model: ${TINY('a')}
    positive_prompts: ["Write a python function"]
    negative_prompts: ["Write a python function"]
  - source_model: ${TINY('b')}
    positive_prompts: ["Once upon a time"]
  - source_model: ${TINY('c')}
    positive_prompts: ["Solve for x"]
`;
  const { report } = await stages('cancel', recipeText('hidden', cancel));
  const s = report.summary.starving.find((x) => x.expert === 0);
  assert.ok(s, `expert 0 starves: ${JSON.stringify(report.summary.starving)}`);
  assert.ok(s.reasons.some((r) => /"Write a python function" is both a positive and a negative prompt of expert 0/.test(r)), s.reasons.join('; '));
});

test('routing.html parses strictly, is self-contained, escapes prompts, and lists every layer and expert', async () => {
  const { report, html } = await stages('page', recipeText('hidden', FOUR));
  const { errors, elements, text } = checkHtml(html);
  assert.deepEqual(errors, []);
  assert.doesNotMatch(html, /https?:/i, 'no URL at all');
  assert.ok(!elements.some((e) => e.name === 'script' || e.name === 'link' || e.name === 'iframe' || e.name === 'img'), 'no script, stylesheet link, frame or image');
  assert.ok(elements.every((e) => !('src' in e.attrs) && !(e.attrs.href ?? '#').replace(/^#.*/, '')), 'only in-page links');
  assert.doesNotMatch(html, /url\(/, 'no CSS url()');
  assert.ok(text.includes('Once upon a time there was a model <script>alert(1)</script> & more'), 'the prompt is shown as text');
  for (let l = 0; l < report.layers; l++) assert.ok(elements.some((e) => e.attrs.id === `layer-${l}`), `layer ${l}`);
  for (const e of report.experts) {
    assert.ok(text.includes(e.label) && text.includes(e.model), e.label);
    assert.ok(elements.some((x) => x.name === 'svg' && x.attrs['aria-label'] === `${e.label} · positive`), `heatmap of ${e.label}`);
  }
  // The merged model's section leads: chance beside each figure, a per-text view across layers, model names.
  assert.ok(html.indexOf('What the merged model routes') < html.indexOf('Build check'), 'headline first');
  assert.match(text, /of tokens go first to their intended expert · chance 25%/);
  const perText = elements.filter((e) => e.name === 'td' && /\bpw\b/.test(e.attrs.class ?? ''));
  assert.equal(perText.length, new Set(report.prompts.map((_, i) => i)).size * report.layers, 'one cell per text and layer');
  // Every prompt here is a routed expert's positive one except the negative: its cells carry no verdict.
  const verdicts = perText.filter((e) => /\b(ok|miss)\b/.test(e.attrs.class ?? '')).length;
  assert.equal(verdicts, report.prompts.filter((p) => p.role === 'positive').length * report.layers);
  for (const e of report.experts) assert.ok(text.includes(`E${e.index} · tiny-${'abcb'[e.index]}`), `expert ${e.index} named by its model`);
  assert.ok(text.includes("training fit: no held-out texts"), 'no held-out texts: the figures say they are training fit');
  // The heatmap: one cell per layer and routed expert in each prompt group.
  const groups = elements.filter((x) => x.name === 'svg').length;
  assert.equal(elements.filter((x) => x.name === 'rect' && x.attrs.fill).length, groups * report.layers * report.routed);
});

test('held-out prompts: the same cached forward pass, reported as held-out; an edited prompt recomputes only itself', async () => {
  const evalFile = join(dir, 'eval.yml');
  writeFileSync(evalFile, `- expert: 1\n  prompts: ["Write a rust function", "Explain the configuration file format"]\n- expert: 2\n  prompts: ["A fairy tale about a dragon"]\n`);
  const first = await stages('heldout', recipeText('hidden', FOUR), evalFile);
  // "Explain the configuration file format" is a recipe prompt: its state is reused; two are new.
  assert.deepEqual(cacheStats(first.stats), { computed: 2, fromCache: 0 });
  const held = first.report.prompts.map((p, i) => [p, i] as const).filter(([p]) => p.set === 'heldout');
  assert.deepEqual(held.map(([p]) => [p.expert, p.text]), [[1, 'Write a rust function'], [1, 'Explain the configuration file format'], [2, 'A fairy tale about a dragon']]);
  for (const lr of first.report.perLayer) {
    const own = held.map(([, i]) => lr.routes[i]!.ownInTopK);
    assert.equal(lr.heldOutAccuracy, own.filter(Boolean).length / own.length);
    // A held-out prompt that is also a recipe prompt routes exactly as the recipe prompt does.
    const recipeRow = first.report.prompts.findIndex((p) => p.set === 'train' && p.text === 'Explain the configuration file format');
    assert.deepEqual(lr.routes[held[1]![1]]!.probabilities, lr.routes[recipeRow]!.probabilities);
  }
  assert.ok(first.report.summary.heldOutAccuracy !== null);
  assert.match(first.html, /expert 1 · held-out/);
  // The headline: the held-out texts' every token through the merged model, recomputed here from its router logits.
  const m = first.report.measured;
  assert.equal(m.headline, 'heldout');
  const { logits } = await mergedRouterLogits(first.merge, join(first.work, 'assemble-experts'), held.map(([p]) => p.text));
  let tokens = 0, top1 = 0, inTop = 0;
  held.forEach(([p], j) => {
    for (const z of logits[j]!) {
      for (let t = 0; t < z.length / 4; t++) {
        const row = Array.from(z.subarray(t * 4, t * 4 + 4));
        const order = [0, 1, 2, 3].sort((a, b) => row[b]! - row[a]! || a - b);
        tokens++;
        if (order[0] === p.expert) top1++;
        if (order.slice(0, 2).includes(p.expert)) inTop++;
      }
    }
  });
  assert.equal(m.overall.heldout!.tokens, tokens);
  assert.ok(tokens > held.length * first.report.layers, 'every token, not one per text');
  assert.ok(Math.abs(m.overall.heldout!.top1 - top1 / tokens) < 1e-12 && Math.abs(m.overall.heldout!.topK - inTop / tokens) < 1e-12);
  assert.ok(!first.report.advice.some((a) => /training fit/.test(a)), 'held-out texts given: not training fit');

  const again = await stages('heldout', recipeText('hidden', FOUR), evalFile);
  assert.deepEqual(cacheStats(again.stats), { computed: 0, fromCache: 2 });
  writeFileSync(evalFile, readFileSync(evalFile, 'utf8').replace('A fairy tale about a dragon', 'A fairy tale about a knight'));
  const edited = await stages('heldout', recipeText('hidden', FOUR), evalFile);
  assert.deepEqual(cacheStats(edited.stats), { computed: 1, fromCache: 1 });

  const jsonl = join(dir, 'eval.jsonl');
  writeFileSync(jsonl, '{"expert": 0, "prompt": "Write a rust function"}\n\n{"expert": 3, "prompt": "Integrate x squared"}\n');
  const fromJsonl = await stages('heldout-jsonl', recipeText('cheap_embed', FOUR), jsonl);
  assert.deepEqual(fromJsonl.report.prompts.filter((p) => p.set === 'heldout').map((p) => [p.expert, p.text]), [[0, 'Write a rust function'], [3, 'Integrate x squared']]);
  assert.equal(fromJsonl.stats.computed, 2, 'cheap_embed sums the embedding rows of new prompts');
});

test('held-out prompt files: errors name the file, the line and what was expected', async () => {
  const cases: [string, string, RegExp][] = [
    ['bad-index.yml', '- expert: 0\n  prompts: ["a"]\n- expert: 7\n  prompts: ["b"]\n', /bad-index\.yml:3, field \[1\]\.expert: expert 7 does not exist: the recipe has 4 routed experts \(0 to 3\)/],
    ['bad-prompt.yml', '- expert: 0\n  prompts: ["a", 3]\n', /bad-prompt\.yml:2, field \[0\]\.prompts\[1\]: a prompt must be a non-empty string, got 3/],
    ['bad-key.yml', '- expert: 0\n  prompt: ["a"]\n', /unknown key "prompt".*Expected a YAML list of \{expert: N, prompts/],
    ['bad.jsonl', '{"expert": 0, "prompt": "a"}\n{"expert": 0, "prompt": "b"\n', /bad\.jsonl:2: invalid JSON .*Expected one \{"expert": N, "prompt": "\.\.\."\} object per line/],
    ['bad.txt', 'x', /held-out prompts must be a \.yml\/\.yaml or \.jsonl file/],
  ];
  for (const [name, body, want] of cases) {
    const f = join(dir, name);
    writeFileSync(f, body);
    await assert.rejects(stages(`err-${name}`, recipeText('cheap_embed', FOUR), f), (e: Error) => {
      assert.match(e.message, want);
      return true;
    });
  }
  await assert.rejects(stages('err-missing', recipeText('cheap_embed', FOUR), join(dir, 'nope.yml')), /nope\.yml: cannot read the held-out prompts file \(ENOENT\)/);
});
