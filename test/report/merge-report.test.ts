/** The report through the whole merge and the mergekit-moe command: random gates, the model card, the flags. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { readRecipe } from '../../libs/recipe/parse';
import { runFetch } from '../../libs/stages/fetch';
import { runEmbedPrompts } from '../../libs/stages/embed-prompts';
import { SafetensorsWeights, readTensorBytes, decodeFloats } from '../../libs/safetensors';
import type { RoutingReport } from '../../libs/report';
import { checkHtml } from '../helpers/html-check';
import { mergekitMoe } from '../helpers/cli';
import { tempDir, TINY } from '../helpers/tmp';

const dir = tempDir('moe-forge-merge-report-');
const cacheDir = join(dir, 'cache');
const recipe = (mode: string) => `base_model: ${TINY('a')}
gate_mode: ${mode}
experts:
  - source_model: ${TINY('b')}
    positive_prompts: ["math", "Solve for x"]
  - source_model: ${TINY('c')}
    positive_prompts: ["code"]
    noise_scale: 0.01
  - source_model: ${TINY('a')}
    positive_prompts: ["poems"]
`;

test('the strict HTML check finds what it is meant to find', () => {
  const ok = '<!DOCTYPE html><html><head><title>t</title></head><body><p>a &amp; b</p><svg><rect/></svg></body></html>';
  assert.deepEqual(checkHtml(ok).errors, []);
  for (const [bad, want] of [
    ['<!DOCTYPE html><html><body><p>a</body></html>', /<\/body> closes <p>/],
    ['<!DOCTYPE html><html><body>a & b</body></html>', /bare '&'/],
    ['<!DOCTYPE html><html><body>1 < 2</body></html>', /'<' that starts no tag/],
    ['<!DOCTYPE html><html><body><p id=x>a</p></body></html>', /'<' that starts no tag/],
    ['<!DOCTYPE html><html><body><p id="x"></p><p id="x"></p></body></html>', /duplicate id x/],
    ['<html></html>', /no <!DOCTYPE html>/],
    ['<!DOCTYPE html><html><body><div/></body></html>', /self-closing <div\/> outside SVG/],
  ] as const) assert.match(checkHtml(bad).errors.join('\n'), want, bad);
});

for (const mode of ['random', 'uniform_random'] as const) {
  test(`${mode}: the report routes the prompts' hidden states through the gates written to the model`, async () => {
    const file = join(dir, `${mode}.yml`);
    writeFileSync(file, recipe(mode));
    const out = join(dir, `${mode}-out`);
    const reportFile = join(dir, `${mode}-report`, 'routing.html');
    await mergeRecipe({ recipeFile: file, outPath: out, modelBaseDir: dir, seed: 3, cacheDir, report: { file: reportFile } });
    const report = JSON.parse(readFileSync(join(dir, `${mode}-report`, 'routing.json'), 'utf8')) as RoutingReport;
    assert.equal(report.gateMode, mode);
    assert.match(report.summary.notes.join(' '), /not built from prompts: routing is arbitrary until the model is trained/);
    // The states: what a hidden-mode merge of the same prompts computes (last token entering each layer).
    const hiddenFile = join(dir, `${mode}-as-hidden.yml`);
    writeFileSync(hiddenFile, recipe('hidden'));
    const { merge } = await runFetch(await readRecipe(hiddenFile), join(dir, `${mode}-h`, 'fetch'), { cacheDir, modelBaseDir: dir });
    const index = await runEmbedPrompts(merge, join(dir, `${mode}-h`, 'states'), { cacheDir });
    assert.equal(index.computed, 0, 'the report computed these states through the same cache');
    const statesDir = join(dir, `${mode}-h`, 'states');
    const sw = await SafetensorsWeights.openFiles(statesDir, [join(statesDir, 'prompt-states.safetensors')]);
    const ow = await SafetensorsWeights.openFolder(out);
    const H = 64;
    for (let l = 0; l < 2; l++) {
      const g = decodeFloats(await readTensorBytes(ow.get(`model.layers.${l}.block_sparse_moe.gate.weight`)), 'F32');
      for (const route of report.perLayer[l]!.routes) {
        const i = index.prompts.findIndex((p) => p.text === report.prompts[route.prompt]!.text);
        const x = decodeFloats(await readTensorBytes(sw.get(`p${i}.last`)), 'F32').subarray(l * H, (l + 1) * H);
        const logits = [0, 1, 2].map((e) => g.subarray(e * H, (e + 1) * H).reduce((a, v, k) => a + v * x[k]!, 0));
        const m = Math.max(...logits);
        const z = logits.reduce((a, v) => a + Math.exp(v - m), 0);
        logits.forEach((v, e) => assert.ok(Math.abs(Math.exp(v - m) / z - route.probabilities[e]!) < 1e-6, `layer ${l} expert ${e}`));
      }
      if (report.perLayer[l]!.starving.length > 0) assert.equal(report.perLayer[l]!.reasons[String(report.perLayer[l]!.starving[0])]![0]!.kind, 'random');
    }
    // The card carries the summary and links the page copied beside it.
    const card = readFileSync(join(out, 'README.md'), 'utf8');
    assert.match(card, /## Routing\n\nWhat this model's untrained routers do \(top-2 of 3 experts\), measured by running the model on every token of the recipe's own prompts \(training fit: no held-out texts were given\); from moe-forge's routing report: \[routing\.html\]\(routing\.html\)\. Chance: 33% first, 67% within the top 2\./);
    assert.match(card, /\| 0 \| \d+% \| \d+% \| \d+\.\d\d \| \d\.\d\d \|\n\| 1 \| \d+% \| \d+% \| \d+\.\d\d \| \d\.\d\d \|/);
    // The card's figures are the report's: the merged model's, on the recipe's prompts.
    const pct = (x: number) => `${(100 * x).toFixed(0)}%`;
    assert.ok(card.includes(`| recipe prompts (training fit) | ${pct(report.measured.overall.train!.top1)} | ${pct(report.measured.overall.train!.topK)} |`), card);
    assert.ok(!report.advice.some((a) => /barely routes/.test(a)), 'random gates: their figures are not blamed on the prompts');
    assert.equal(readFileSync(join(out, 'routing.html'), 'utf8'), readFileSync(reportFile, 'utf8'));
    assert.deepEqual(checkHtml(readFileSync(reportFile, 'utf8')).errors, []);
  });
}

test('mergekit-moe --report FILE --eval-prompts: both files, a card that names starving experts; bad flags say what is expected', async () => {
  const file = join(dir, 'cli.yml');
  writeFileSync(file, `base_model: ${TINY('a')}
gate_mode: cheap_embed
experts:
  - source_model: ${TINY('b')}
    positive_prompts: ["Write a python function"]
  - source_model: ${TINY('c')}
    positive_prompts: ["Write a python function"]
  - source_model: ${TINY('a')}
    positive_prompts: ["Once upon a time"]
`);
  const evalFile = join(dir, 'cli-eval.jsonl');
  writeFileSync(evalFile, '{"expert": 2, "prompt": "A fairy tale"}\n');
  const r = await mergekitMoe([file, join(dir, 'cli-out'), '--report', join(dir, 'cli-report.json'), '--eval-prompts', evalFile], dir);
  assert.equal(r.exitCode, 0, r.stderr);
  const report = JSON.parse(readFileSync(join(dir, 'cli-report.json'), 'utf8')) as RoutingReport;
  assert.ok(existsSync(join(dir, 'cli-report.html')));
  assert.deepEqual(report.prompts.filter((p) => p.set === 'heldout').map((p) => p.text), ['A fairy tale']);
  const card = readFileSync(join(dir, 'cli-out', 'README.md'), 'utf8');
  assert.match(card, /- expert 0 \([^)]*tiny-b\) and expert 1 \([^)]*tiny-c\): router rows nearly identical in every layer \(cos up to 1\.0000\), so the router cannot tell them apart; they have the same positive prompts: give each its own\./);
  assert.match(card, /\| texts \| tokens first to the intended expert \| intended within top 2 \| texts won by the intended expert \| margin \|\n\|---\|---\|---\|---\|---\|\n\| held-out \| \d+% \|/);

  const noReport = await mergekitMoe([file, join(dir, 'cli-out2'), '--eval-prompts', evalFile], dir);
  assert.equal(noReport.exitCode, 1);
  assert.match(noReport.stderr, /--eval-prompts needs --report FILE/);
  const badName = await mergekitMoe([file, join(dir, 'cli-out2'), '--report', join(dir, 'report.txt')], dir);
  assert.equal(badName.exitCode, 1);
  assert.match(badName.stderr, /--report needs a file name ending in \.html or \.json/);
  assert.ok(!existsSync(join(dir, 'cli-out2')), 'nothing written');
  const badEval = join(dir, 'cli-bad.yml');
  writeFileSync(badEval, '- expert: 9\n  prompts: ["x"]\n');
  const badHeld = await mergekitMoe([file, join(dir, 'cli-out2'), '--report', join(dir, 'r2.html'), '--eval-prompts', badEval], dir);
  assert.equal(badHeld.exitCode, 1);
  assert.match(badHeld.stderr, /cli-bad\.yml:1, field \[0\]\.expert: expert 9 does not exist/);
  assert.ok(!existsSync(join(dir, 'cli-out2')) && !existsSync(join(dir, 'r2.html')), 'nothing written');
  const inModel = await mergekitMoe([file, join(dir, 'cli-out3'), '--report', join(TINY('b'), 'routing.html')], dir);
  assert.equal(inModel.exitCode, 1);
  assert.match(inModel.stderr, /routing\.html lies inside the model folder of .*tiny-b.*; writing there would destroy it/);
  assert.ok(!existsSync(join(TINY('b'), 'routing.html')));
});
