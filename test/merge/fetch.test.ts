import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { startHubServer } from '../helpers/hub-server';
import { copyModel, FIXTURES, TINY, tempDir } from '../helpers/tmp';
import { earlyMergeContext } from '../../libs/stages/fetch';
import { readRecipe } from '../../libs/recipe/parse';

const files = (dir: string, patch?: (cfg: Record<string, unknown>) => void) => {
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  patch?.(cfg);
  return {
    'config.json': Buffer.from(JSON.stringify(cfg)),
    'tokenizer.json': readFileSync(join(dir, 'tokenizer.json')),
    'tokenizer_config.json': readFileSync(join(dir, 'tokenizer_config.json')),
    'model.safetensors': readFileSync(join(dir, 'model.safetensors')),
  };
};

const recipe = (base: string, a: string, b: string) => `base_model: ${base}
gate_mode: cheap_embed
experts:
  - source_model: ${a}
    positive_prompts: ["How do I merge two models with mergekit?"]
  - source_model: ${b}
    positive_prompts: ["Once upon a time there was a model"]
`;

const CHAT = '{% for m in messages %}{{ m.content }}{% endfor %}';
const GEN = '{\n  "eos_token_id": [\n    1,\n    3\n  ],\n  "temperature": 0.7\n}\n';

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
/** Every weight file of an output folder, by name and content. */
const weights = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.safetensors') || f.endsWith('.index.json')).sort().map((f) => `${f} ${sha(join(dir, f))}`);

test('Hub models: validated from headers before any weight download, then merged from the cache offline', async () => {
  const server = await startHubServer([
    { id: 'org/tiny-a', files: { ...files(TINY('a')), 'chat_template.jinja': Buffer.from(CHAT), 'generation_config.json': Buffer.from(GEN) } },
    { id: 'org/tiny-b', files: files(TINY('b')) },
    { id: 'org/wide', files: files(TINY('c'), (c) => { c.hidden_size = 128; }) },
  ]);
  let closed = false;
  after(() => (closed ? undefined : server.close()));
  const d = tempDir();
  const env = { HF_HUB_CACHE: join(d, 'hub'), HF_ENDPOINT: server.url, HF_HUB_OFFLINE: undefined, HF_TOKEN: undefined };
  writeFileSync(join(d, 'bad.yml'), recipe('org/tiny-a', 'org/tiny-b', 'org/wide'));
  await assert.rejects(
    mergeRecipe({ recipeFile: join(d, 'bad.yml'), outPath: join(d, 'bad-out'), modelBaseDir: d, cacheDir: join(d, 'c'), env }),
    /experts\[1\] org\/wide has hidden_size 128 but the base model org\/tiny-a has 64/,
  );
  const weightGets = server.requests.filter((r) => r.path.endsWith('model.safetensors') && r.method === 'GET');
  assert.ok(weightGets.length > 0, 'headers were read');
  for (const r of weightGets) {
    assert.ok(r.range !== null && r.bytes < 100_000, `only header ranges before validation: ${r.method} ${r.path} ${r.range} ${r.bytes} bytes`);
  }

  writeFileSync(join(d, 'good.yml'), recipe('org/tiny-a', 'org/tiny-a', 'org/tiny-b'));
  const out = join(d, 'out');
  const logs: string[] = [];
  await mergeRecipe({ recipeFile: join(d, 'good.yml'), outPath: out, modelBaseDir: d, cacheDir: join(d, 'c'), env, log: (l) => logs.push(l) });
  assert.ok(logs.some((l) => /model org\/tiny-a: downloaded/.test(l)), logs.join('\n'));
  // The base's chat template and generation settings come down with it and into the output; the card names Hub ids.
  assert.equal(readFileSync(join(out, 'chat_template.jinja'), 'utf8'), CHAT);
  assert.equal(readFileSync(join(out, 'generation_config.json'), 'utf8'), GEN);
  assert.match(readFileSync(join(out, 'README.md'), 'utf8'), /^---\nbase_model:\n  - org\/tiny-a\n  - org\/tiny-b\ntags:/);
  // The same merge from local folders gives the same bytes.
  writeFileSync(join(d, 'local.yml'), recipe(TINY('a'), TINY('a'), TINY('b')));
  await mergeRecipe({ recipeFile: join(d, 'local.yml'), outPath: join(d, 'local-out'), modelBaseDir: d, cacheDir: join(d, 'c') });
  assert.deepEqual(weights(out), weights(join(d, 'local-out')));
  await server.close();
  closed = true;
  const logs2: string[] = [];
  await mergeRecipe({ recipeFile: join(d, 'good.yml'), outPath: join(d, 'out2'), modelBaseDir: d, cacheDir: join(d, 'c'), env: { ...env, HF_HUB_OFFLINE: '1' }, log: (l) => logs2.push(l) });
  assert.ok(logs2.some((l) => /model org\/tiny-a: cache/.test(l)), logs2.join('\n'));
  assert.deepEqual(weights(join(d, 'out2')), weights(out));
});

test('a PyTorch .bin model merges to the same output as its safetensors twin; an unknown global is refused', async () => {
  const d = tempDir();
  const bin = join(FIXTURES, 'tiny-llama-bin', 'tiny-a');
  writeFileSync(join(d, 'bin.yml'), recipe(bin, bin, TINY('b')));
  writeFileSync(join(d, 'st.yml'), recipe(TINY('a'), TINY('a'), TINY('b')));
  await mergeRecipe({ recipeFile: join(d, 'bin.yml'), outPath: join(d, 'bin-out'), modelBaseDir: d, cacheDir: join(d, 'c') });
  await mergeRecipe({ recipeFile: join(d, 'st.yml'), outPath: join(d, 'st-out'), modelBaseDir: d, cacheDir: join(d, 'c') });
  assert.deepEqual(weights(join(d, 'bin-out')), weights(join(d, 'st-out')));
  // Hidden states of a .bin base: the forward pass reads the checkpoint's stored tensors in place too.
  writeFileSync(join(d, 'bin-h.yml'), recipe(bin, bin, TINY('b')).replace('cheap_embed', 'hidden'));
  writeFileSync(join(d, 'st-h.yml'), recipe(TINY('a'), TINY('a'), TINY('b')).replace('cheap_embed', 'hidden'));
  await mergeRecipe({ recipeFile: join(d, 'bin-h.yml'), outPath: join(d, 'bin-h'), modelBaseDir: d, cacheDir: join(d, 'c1') });
  await mergeRecipe({ recipeFile: join(d, 'st-h.yml'), outPath: join(d, 'st-h'), modelBaseDir: d, cacheDir: join(d, 'c2') });
  assert.deepEqual(weights(join(d, 'bin-h')), weights(join(d, 'st-h')));
  const evil = join(FIXTURES, 'tiny-llama-bin', 'unknown-global');
  writeFileSync(join(d, 'evil.yml'), recipe(TINY('a'), evil, TINY('b')));
  await assert.rejects(mergeRecipe({ recipeFile: join(d, 'evil.yml'), outPath: join(d, 'evil-out'), modelBaseDir: d, cacheDir: join(d, 'c') }), /__main__\.NotATensor/);
});

test('the early merge context (local safetensors models, from their headers, before fetch hashes them) says whether their weight files are as they were; none for a .bin model', async () => {
  const d = tempDir();
  const a = copyModel(TINY('a'), join(d, 'a'));
  writeFileSync(join(d, 'moe.yml'), recipe(a, a, TINY('b')));
  const opts = { cacheDir: join(d, 'c'), modelBaseDir: d };
  const early = await earlyMergeContext(await readRecipe(join(d, 'moe.yml')), opts);
  assert.ok(early, 'local safetensors models');
  assert.deepEqual(early.merge.ctx.experts.map((e) => e.model.dir), [a, TINY('b')]);
  const fetched = [{ key: `local:${a}`, dir: a }, { key: `local:${TINY('b')}`, dir: TINY('b') }];
  assert.equal(early.unchanged(fetched), true);
  assert.equal(early.unchanged([{ key: `local:${a}`, dir: join(d, 'elsewhere') }]), false, 'fetch took another folder for a model');
  // Saved over (a new file under the same name): the shards written from the old headers are not kept.
  copyFileSync(join(TINY('c'), 'model.safetensors'), join(a, 'model.safetensors.part'));
  renameSync(join(a, 'model.safetensors.part'), join(a, 'model.safetensors'));
  assert.equal(early.unchanged(fetched), false);
  const bin = join(FIXTURES, 'tiny-llama-bin', 'tiny-a');
  writeFileSync(join(d, 'bin.yml'), recipe(bin, bin, TINY('b')));
  assert.equal(await earlyMergeContext(await readRecipe(join(d, 'bin.yml')), opts), null, 'a pickled checkpoint is located only once opened');
});

test('Hub models complete in the Hugging Face cache are taken ahead of fetch as local folders are: the early plan from their snapshots\' headers, the base\'s pass speculated there; a snapshot other than the one fetch takes is not unchanged', async () => {
  const { speculationStats } = await import('../../libs/forward');
  const { scheduleStats } = await import('../../libs/pipeline/schedule');
  const server = await startHubServer([
    { id: 'org/tiny-a', files: files(TINY('a')) },
    { id: 'org/tiny-b', files: files(TINY('b')) },
  ]);
  let closed = false;
  after(() => (closed ? undefined : server.close()));
  const d = tempDir();
  const env = { HF_HUB_CACHE: join(d, 'hub'), HF_ENDPOINT: server.url, HF_HUB_OFFLINE: undefined, HF_TOKEN: undefined };
  writeFileSync(join(d, 'moe.yml'), recipe('org/tiny-a', 'org/tiny-a', 'org/tiny-b').replace('cheap_embed', 'hidden'));
  const opts = { cacheDir: join(d, 'c'), modelBaseDir: d, env };
  const asked = server.requests.length;
  assert.equal(await earlyMergeContext(await readRecipe(join(d, 'moe.yml')), opts), null, 'weights not in the cache: fetch downloads them first');
  assert.equal(server.requests.length, asked, 'and the Hub is not asked twice (fetch inspects the models itself)');
  const early0 = scheduleStats.early;
  await mergeRecipe({ recipeFile: join(d, 'moe.yml'), outPath: join(d, 'first'), modelBaseDir: d, cacheDir: join(d, 'c0'), env });
  assert.equal(scheduleStats.early, early0, 'the downloading run planned after fetch');
  await server.close();
  closed = true;

  const offline = { ...env, HF_HUB_OFFLINE: '1' };
  const early = await earlyMergeContext(await readRecipe(join(d, 'moe.yml')), { ...opts, env: offline });
  assert.ok(early, 'complete snapshots in the cache');
  const [a, b] = early.merge.ctx.experts.map((e) => e.model.dir);
  assert.match(a!, /models--org--tiny-a\/snapshots\/[0-9a-f]{40}$/);
  assert.match(b!, /models--org--tiny-b\/snapshots\/[0-9a-f]{40}$/);
  const fetched = [{ key: 'hub:org/tiny-a@main', dir: a! }, { key: 'hub:org/tiny-b@main', dir: b! }];
  assert.equal(early.unchanged(fetched), true);
  // The cache's ref moved to another commit meanwhile (another download): fetch takes that snapshot.
  assert.equal(early.unchanged([{ key: 'hub:org/tiny-a@main', dir: a!.replace(/[0-9a-f]{40}$/, '0'.repeat(40)) }, fetched[1]!]), false);

  // The command, offline, into a new folder with a new prompt cache: written ahead from the snapshots' headers,
  // the base's prompts sent to the forward worker before fetch hashed anything, and the bytes of the local merge.
  const taken = speculationStats.taken;
  const logs: string[] = [];
  await mergeRecipe({ recipeFile: join(d, 'moe.yml'), outPath: join(d, 'out'), modelBaseDir: d, cacheDir: join(d, 'c1'), env: offline, log: (l) => logs.push(l) });
  assert.equal(scheduleStats.early, early0 + 1, 'the early plan came from the cached snapshots');
  assert.equal(speculationStats.taken, taken + 1, `the stage took the pass speculated on the cached base:\n${logs.join('\n')}`);
  assert.ok(logs.some((l) => /while the routers are computed/.test(l)), logs.join('\n'));
  writeFileSync(join(d, 'local.yml'), recipe(TINY('a'), TINY('a'), TINY('b')).replace('cheap_embed', 'hidden'));
  await mergeRecipe({ recipeFile: join(d, 'local.yml'), outPath: join(d, 'local-out'), modelBaseDir: d, cacheDir: join(d, 'c2') });
  assert.deepEqual(weights(join(d, 'out')), weights(join(d, 'local-out')));
  assert.deepEqual(weights(join(d, 'out')), weights(join(d, 'first')));
});
