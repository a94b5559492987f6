import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, readdirSync, statSync, existsSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { SafetensorsWeights, readTensorBytes, decodeFloats } from '../../libs/safetensors';
import { assertMatchesManifest, manifest } from '../helpers/manifest';
import { FIXTURES, tempDir } from '../helpers/tmp';
import { bf16Unavailable, usePortableBf16 } from '../../libs/forward';
import { compactStats, forgetLoadedTokenizers, loadTokenizer, promptIds, tokenizerStats } from '../../libs/tokenizer';
import { promptIdsMemo } from '../../libs/prompt-cache';
import { ContentCache } from '../../libs/cache';

const PARITY = join(FIXTURES, 'parity');
const refJson = JSON.parse(readFileSync(join(PARITY, 'mixtral-hidden.reference.json'), 'utf8'));
const refFile = join(PARITY, 'mixtral-hidden.reference.safetensors');

async function refTensor(name: string): Promise<{ data: Float32Array; shape: number[] }> {
  const w = await SafetensorsWeights.openFiles(PARITY, [refFile]);
  const loc = w.get(name);
  return { data: decodeFloats(await readTensorBytes(loc), 'F32'), shape: loc.shape };
}

async function routers(out: string, L: number): Promise<Float32Array[]> {
  const w = await SafetensorsWeights.openFolder(out);
  const res: Float32Array[] = [];
  for (let l = 0; l < L; l++) res.push(decodeFloats(await readTensorBytes(w.get(`model.layers.${l}.block_sparse_moe.gate.weight`)), 'F32'));
  return res;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function merge(recipe: string, out: string, cacheDir: string, gateMode?: string) {
  const lines: string[] = [];
  const d = tempDir();
  const file = join(d, 'moe.yml');
  let text = readFileSync(recipe, 'utf8').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama'));
  if (gateMode) text = text.replace('gate_mode: hidden', `gate_mode: ${gateMode}`);
  writeFileSync(file, text);
  await mergeRecipe({ recipeFile: file, outPath: out, modelBaseDir: d, cacheDir, overwrite: true, log: (l) => lines.push(l) });
  const stat = lines.find((l) => l.startsWith('prompt states:'))!;
  const [, computed, cached] = /(\d+) computed, (\d+) from cache/.exec(stat)!;
  return { computed: Number(computed), cached: Number(cached), text, file };
}

test('hidden merge: routers match the reference (float32 within 1e-4, its bf16 run within 3e-3), every other tensor bit-identical', async () => {
  const out = join(tempDir(), 'out');
  await merge(join(PARITY, 'mixtral-hidden.yml'), out, tempDir());
  await assertMatchesManifest(out, manifest('mixtral-hidden.classic.manifest.json'), 3e-3);
  const want = await refTensor('gates.hidden.float32');
  const got = await routers(out, 2);
  for (let l = 0; l < 2; l++) assert.ok(maxDiff(got[l]!, want.data.subarray(l * 3 * 64, (l + 1) * 3 * 64)) < 1e-4, `layer ${l}`);
});

test("hidden_avg equals the reference's padded mean computed from its own padded batches", async () => {
  const out = join(tempDir(), 'out');
  await merge(join(PARITY, 'mixtral-hidden.yml'), out, tempDir(), 'hidden_avg');
  const got = await routers(out, 2);
  const L = 2;
  const H = 64;
  // Independently: mean over all T positions (pads included) of the reference's hidden states, then over prompts.
  const batchMean = async (name: string) => {
    const { data, shape } = await refTensor(`${name}.hidden_states.float32`);
    const [, B, T] = shape as [number, number, number, number];
    return Array.from({ length: L }, (_, l) => {
      const v = new Float64Array(H);
      for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) for (let k = 0; k < H; k++) v[k] += data[((l * B + b) * T + t) * H + k]! / T / B;
      return v;
    });
  };
  for (let e = 0; e < 3; e++) {
    const pos = await batchMean(`e${e}.positive_prompts`);
    const neg = refJson.experts[e].negative_prompts ? await batchMean(`e${e}.negative_prompts`) : null;
    for (let l = 0; l < L; l++) {
      const v = pos[l]!.map((x, k) => x - (neg ? neg[l]![k]! : 0));
      const n = Math.hypot(...v);
      assert.ok(maxDiff(v.map((x) => x / n), got[l]!.subarray(e * H, (e + 1) * H)) < 1e-4, `expert ${e} layer ${l}`);
    }
  }
});

test('prompt states are cached by content: unchanged → 0 computed, one prompt added → 1, corrupt entry → recomputed, shared across recipes', async () => {
  const cache = tempDir();
  const recipe = join(PARITY, 'mixtral-hidden.yml');
  const first = await merge(recipe, join(tempDir(), 'o'), cache);
  assert.deepEqual([first.computed, first.cached], [6, 0]);
  const again = await merge(recipe, join(tempDir(), 'o'), cache);
  assert.deepEqual([again.computed, again.cached], [0, 6]);
  const d = tempDir();
  const added = join(d, 'added.yml');
  writeFileSync(added, readFileSync(recipe, 'utf8').replace('      - "Once upon a time there was a model"', '      - "Once upon a time there was a model"\n      - "A brand new prompt about dragons"'));
  const plusOne = await merge(added, join(tempDir(), 'o'), cache);
  assert.deepEqual([plusOne.computed, plusOne.cached], [1, 6]);
  // A second recipe with the same base and a different expert list shares every prompt state.
  const other = join(d, 'other.yml');
  writeFileSync(other, readFileSync(recipe, 'utf8').replace('tiny-llama/tiny-c', 'tiny-llama/tiny-b').replace('residual_scale: 0.5', 'residual_scale: 0.25'));
  const shared = await merge(other, join(tempDir(), 'o'), cache);
  assert.deepEqual([shared.computed, shared.cached], [0, 6]);
  // Corrupt every stored content file: cacache's integrity check catches it and the states are recomputed.
  const walk = (p: string): string[] => (statSync(p).isDirectory() ? readdirSync(p).flatMap((f) => walk(join(p, f))) : [p]);
  const contents = walk(join(cache, 'content-v2'));
  assert.ok(contents.length >= 7);
  for (const f of contents) {
    const b = readFileSync(f);
    b[b.length - 1] ^= 0xff;
    writeFileSync(f, b);
  }
  const out = join(tempDir(), 'o');
  const repaired = await merge(recipe, out, cache);
  assert.deepEqual([repaired.computed, repaired.cached], [6, 0]);
  const again2 = await merge(recipe, join(tempDir(), 'o'), cache);
  assert.deepEqual([again2.computed, again2.cached], [0, 6]);
  await assertMatchesManifest(out, manifest('mixtral-hidden.classic.manifest.json'), 3e-3);
});

test('an edit that adds a one-token prompt (the empty prompt: BOS alone) gives a cold build\'s routers bit for bit', async () => {
  const withEmpty = (text: string) => text.replace('      - "Once upon a time there was a model"', '      - "Once upon a time there was a model"\n      - ""');
  const d = tempDir();
  const base = readFileSync(join(PARITY, 'mixtral-hidden.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama'));
  assert.notEqual(withEmpty(base), base);
  const build = async (text: string, out: string, cacheDir: string) => {
    writeFileSync(join(d, 'moe.yml'), text);
    const lines: string[] = [];
    await mergeRecipe({ recipeFile: join(d, 'moe.yml'), outPath: out, modelBaseDir: d, cacheDir, overwrite: true, log: (l) => lines.push(l) });
    return lines.find((l) => l.startsWith('prompt states:'))!;
  };
  // Cold: the empty prompt's one token packed with the other prompts.
  const cold = join(d, 'cold');
  await build(withEmpty(base), cold, join(d, 'cache-cold'));
  // Built without it, then edited: the empty prompt computed alone.
  const edited = join(d, 'edited');
  const cache = join(d, 'cache-edit');
  await build(base, edited, cache);
  assert.match(await build(withEmpty(base), edited, cache), /1 computed, 6 from cache/);
  const [a, b] = [await routers(cold, 2), await routers(edited, 2)];
  for (let l = 0; l < 2; l++) assert.deepEqual([...b[l]!], [...a[l]!], `layer ${l}`);
});

test('the forward pass runs in a child process and its errors reach the merge with their message', async () => {
  const d = tempDir();
  const file = join(d, 'moe.yml');
  writeFileSync(file, readFileSync(join(PARITY, 'mixtral-hidden.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama')));
  const out = join(d, 'out');
  await assert.rejects(mergeRecipe({ recipeFile: file, outPath: out, modelBaseDir: d, cacheDir: tempDir(), device: 'cuda' }), (e: Error) => {
    assert.match(e.message, /cuda/i);
    assert.match(e.message, /cpu/);
    assert.match(e.message, /ONNXRUNTIME_NODE_INSTALL/);
    return true;
  });
  assert.ok(!existsSync(out));
});

/** The cache's prompt-state entries as cacache lists them (a test may rewrite the index as someone else could). */
async function promptEntries(cache: string): Promise<{ key: string; integrity: string; size: number; path: string }[]> {
  const cacache = require('cacache');
  return (Object.values(await cacache.ls(cache)) as { key: string; integrity: string; size: number; path: string }[]).filter((e) => e.key.startsWith('prompt-state:'));
}

test('prompt-state entries are bound to their prompt: entries moved under other prompts\' keys are misses, and the routers are a clean build\'s', async () => {
  const recipe = join(PARITY, 'mixtral-hidden.yml');
  const cleanOut = join(tempDir(), 'o');
  await merge(recipe, cleanOut, tempDir());
  const clean = await routers(cleanOut, 2);
  const cache = tempDir();
  await merge(recipe, join(tempDir(), 'o'), cache);
  // Every prompt's key now points at the next prompt's content (same size, intact integrity).
  const entries = await promptEntries(cache);
  assert.equal(entries.length, 6);
  const cacache = require('cacache');
  for (const [i, e] of entries.entries()) {
    const other = entries[(i + 1) % entries.length]!;
    await cacache.index.insert(cache, e.key, other.integrity, { size: other.size });
  }
  const out = join(tempDir(), 'o');
  const swapped = await merge(recipe, out, cache);
  assert.deepEqual([swapped.computed, swapped.cached], [6, 0]);
  assert.deepEqual(await routers(out, 2), clean);
  // The entries were overwritten: the next build finds them.
  const again = await merge(recipe, join(tempDir(), 'o'), cache);
  assert.deepEqual([again.computed, again.cached], [0, 6]);
});

test('a prompt-state entry larger than it can be (a 3 GB sparse file) is a miss, refused by its size before it is read', async () => {
  const recipe = join(PARITY, 'mixtral-hidden.yml');
  const cleanOut = join(tempDir(), 'o');
  const cache = tempDir();
  await merge(recipe, cleanOut, cache);
  const clean = await routers(cleanOut, 2);
  const [victim] = await promptEntries(cache);
  truncateSync(victim!.path, 3 * 2 ** 30);
  const out = join(tempDir(), 'o');
  // Bytes this process reads (Linux): refused by its size, the entry is never read (reading it took 3 GB of memory).
  const readBytes = () => Number(/rchar: (\d+)/.exec(readFileSync('/proc/self/io', 'utf8'))?.[1] ?? 0);
  const before = readBytes();
  const grown = await merge(recipe, out, cache);
  if (existsSync('/proc/self/io')) assert.ok(readBytes() - before < 2 ** 30, `read ${readBytes() - before} bytes`);
  assert.deepEqual([grown.computed, grown.cached], [1, 5]);
  assert.deepEqual(await routers(out, 2), clean);
  const again = await merge(recipe, join(tempDir(), 'o'), cache);
  assert.deepEqual([again.computed, again.cached], [0, 6]);
});

test('a hidden merge forks its forward worker ahead when its prompts may need states and sends it the prompts the folder was not built from before the models are resolved; a rerun whose prompts were all built into the folder does not; nothing is sent for prompts the cache holds (the worker stopped when it holds all); none left', async () => {
  const { waitingForwardWorker, speculatedForwardWorker, speculationStats } = await import('../../libs/forward');
  const d = tempDir();
  const file = join(d, 'moe.yml');
  const text = readFileSync(join(PARITY, 'mixtral-hidden.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama'));
  writeFileSync(file, text);
  const cacheDir = tempDir();
  const run = async (out: string) => {
    const seen: { line: string; waiting: number | null; speculated: number | null }[] = [];
    const taken = speculationStats.taken;
    await mergeRecipe({ recipeFile: file, outPath: join(d, out), modelBaseDir: d, cacheDir, overwrite: true, log: (line) => seen.push({ line, waiting: waitingForwardWorker(), speculated: speculatedForwardWorker() }) });
    assert.equal(waitingForwardWorker(), null, 'none is left');
    assert.equal(speculatedForwardWorker(), null, 'no speculated pass is left');
    const states = seen.find((s) => s.line.startsWith('prompt states:'))!;
    assert.equal(states.waiting, null, 'by the prompt states\' line the worker served the pass or was stopped');
    assert.equal(states.speculated, null, 'by then the speculated pass was taken or ended');
    const model = seen.find((s) => s.line.startsWith('model '));
    return { waiting: model?.waiting ?? null, speculated: model?.speculated ?? null, states: states.line, taken: speculationStats.taken - taken };
  };
  let r = await run('out');
  assert.equal(r.waiting, null, 'cold: the worker is not waiting while the models are resolved...');
  assert.ok(r.speculated, '...it already runs the prompts');
  assert.match(r.states, /[1-9]\d* computed/);
  assert.equal(r.taken, 1, 'the stage took that pass');
  r = await run('out');
  assert.deepEqual([r.waiting, r.speculated], [null, null], 'the same prompts as the folder was built from: no worker ahead');
  assert.match(r.states, / 0 computed/);
  const sent = speculationStats.sent;
  r = await run('other');
  assert.deepEqual([r.waiting, r.speculated], [null, null], 'a folder built from nothing, but every state in the cache (the base\'s id memoised): nothing sent, the worker stopped at once');
  assert.equal(speculationStats.sent, sent);
  assert.match(r.states, / 0 computed/);
  // A prompt the folder was not built from: sent ahead, and that pass serves the stage.
  const first = /positive_prompts:\n(\s+)- /.exec(text)!;
  writeFileSync(file, text.replace(first[0], `${first[0]}"a prompt never seen"\n${first[1]}- `));
  forgetLoadedTokenizers(); // as a new command's process: the tokenizer not built yet
  r = await run('out');
  assert.ok(r.speculated, 'a new prompt: sent ahead');
  assert.match(r.states, /1 computed/);
  assert.equal(r.taken, 1, 'the stage took it');
  // Its ids went into the memo once it was sent (the look ahead stores them): the next command needs no tokenizer for it.
  forgetLoadedTokenizers();
  const built = tokenizerStats.built;
  const ids = await promptIds(join(FIXTURES, 'tiny-llama', 'tiny-a'), ['a prompt never seen'], promptIdsMemo(new ContentCache(cacheDir)));
  assert.equal(tokenizerStats.built, built, 'its ids were read from the memo');
  assert.ok(ids.ids[0]!.length > 1);
  // The tokenizer that command built was kept in its compact form (put once the prompts were sent): a text nobody
  // tokenized before takes it instead of tokenizer.json.
  forgetLoadedTokenizers();
  const loaded = compactStats.loaded;
  const fresh = await promptIds(join(FIXTURES, 'tiny-llama', 'tiny-a'), ['a text nobody tokenized'], promptIdsMemo(new ContentCache(cacheDir)));
  assert.equal(tokenizerStats.built, built, 'not built from tokenizer.json');
  assert.equal(compactStats.loaded, loaded + 1, 'from its compact form');
  forgetLoadedTokenizers();
  assert.deepEqual(fresh.ids, [(await loadTokenizer(join(FIXTURES, 'tiny-llama', 'tiny-a'))).encodePrompt('a text nobody tokenized')]);
  // A new folder (every prompt expected to miss) with one more new prompt: only the one the cache lacks is sent.
  writeFileSync(file, text.replace(first[0], `${first[0]}"a prompt never seen"\n${first[1]}- "another one"\n${first[1]}- `));
  r = await run('third');
  assert.ok(r.speculated);
  assert.equal(speculationStats.lastPrompts, 1, 'only the uncached prompt went');
  assert.match(r.states, / 1 computed/);
  assert.equal(r.taken, 1, 'the stage took it');
});

test('a bf16 merge sends its prompts ahead too, in bf16: the stage takes that pass; states the cache holds only in fp32 are sent, those it holds in bf16 are not', { skip: bf16Unavailable() !== null && bf16UnavailableEvenPortable() }, async () => {
  const { speculatedForwardWorker, speculationStats } = await import('../../libs/forward');
  // The AVX512-BF16 kernel where the CPU has it, else its portable twin (forked workers follow the environment).
  const portable = bf16Unavailable() !== null;
  usePortableBf16(portable);
  try {
    const d = tempDir();
    const file = join(d, 'moe.yml');
    writeFileSync(file, readFileSync(join(PARITY, 'mixtral-hidden.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama')));
    const cacheDir = tempDir();
    const run = async (out: string, forwardPrecision: 'fp32' | 'bf16') => {
      const sent = speculationStats.sent;
      const taken = speculationStats.taken;
      let speculated: number | null = null;
      const lines: string[] = [];
      await mergeRecipe({ recipeFile: file, outPath: join(d, out), modelBaseDir: d, cacheDir, overwrite: true, forwardPrecision, log: (line) => {
        lines.push(line);
        if (line.startsWith('model ')) speculated ??= speculatedForwardWorker();
      } });
      return { sent: speculationStats.sent - sent, taken: speculationStats.taken - taken, prompts: speculationStats.lastPrompts, speculated, states: lines.find((l) => l.startsWith('prompt states:'))! };
    };
    const exact = await run('fp32', 'fp32');
    assert.match(exact.states, /[1-9]\d* computed/);
    const all = exact.prompts;
    // A new folder: every state is in the cache, but as fp32 only; the bf16 pass needs them all.
    const first = await run('bf16', 'bf16');
    assert.equal(first.sent, 1, 'sent ahead in bf16');
    assert.ok(first.speculated, 'running while the models are resolved');
    assert.equal(first.prompts, all, 'fp32 entries do not stand for bf16 ones');
    assert.equal(first.taken, 1, 'the stage took that pass');
    assert.match(first.states, new RegExp(`${all} computed`));
    // Another new folder: the bf16 states are cached now, so nothing is sent.
    const again = await run('bf16-again', 'bf16');
    assert.equal(again.sent, 0);
    assert.match(again.states, / 0 computed/);
    // The speculated pass ran in bf16: layer 1's routers (from layer 0's output; layer 0's come from the
    // embeddings, the same in both) are not the fp32 ones, and within bf16's rounding of them.
    const [b, f] = [await routers(join(d, 'bf16'), 2), await routers(join(d, 'fp32'), 2)];
    assert.deepEqual(b[0], f[0], 'layer 0: the embeddings\' rows');
    const scale = maxDiff(f[1]!, new Float32Array(f[1]!.length));
    assert.ok(maxDiff(b[1]!, f[1]!) > 0, 'layer 1: bf16 routers differ from fp32 ones');
    assert.ok(maxDiff(b[1]!, f[1]!) < 2e-2 * scale, `layer 1: ${maxDiff(b[1]!, f[1]!)} of ${scale}`);
  } finally {
    usePortableBf16(false);
  }
});

/** True where not even the portable bf16 kernel can run (no module built: no C compiler at install). */
function bf16UnavailableEvenPortable(): boolean {
  usePortableBf16(true);
  try {
    return bf16Unavailable() !== null;
  } finally {
    usePortableBf16(false);
  }
}
