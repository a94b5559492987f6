/**
 * forwardPrecision bf16: the projections in native/bf16-matmul.c (AVX512-BF16, or its portable twin), the
 * attention in onnxruntime; opt-in, cached apart from the exact states.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { computeAllHiddenStates, computePromptStates, bf16Unavailable } from '../../libs/forward';
import { WeightStream, bf16Matmul, MATMUL_MODE, whyBf16Unavailable, type WeightPiece } from '../../libs/forward/bf16';
import { convertBytes, decodeFloats, readTensorBytes, type TensorLocation } from '../../libs/safetensors';
import { planLayerTensors } from '../../libs/forward/layer-graph';
import { aheadStats, prepareForward } from '../../libs/forward/run';
import { openWeights, readModelConfig } from '../../libs/model-folder';
import { normalize } from '../../libs/gates';
import { readRecipe } from '../../libs/recipe/parse';
import { runFetch } from '../../libs/stages/fetch';
import { runEmbedPrompts } from '../../libs/stages/embed-prompts';
import { promptStateKey } from '../../libs/prompt-cache';
import { describeError } from '../../libs/errors';
import { maxAbsDiff } from '../helpers/forward-reference';
import { FIXTURES, openReference } from '../helpers/forward-fixtures';
import { TINY, tempDir } from '../helpers/tmp';
import { withKernel } from '../helpers/kernels';
import { writeTinyModel } from '../../tools/testing/tiny-models';

const PROMPTS = [[0, 42, 506, 359, 81, 393, 7, 7, 12], [0, 9], [0, 300, 301, 17, 18], [5]];
const PROJ = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'];
const CPU_HAS_BF16 = bf16Unavailable() === null;
/** Each kernel this machine can run: the portable one always, the AVX512-BF16 one where the CPU has it. */
const KERNELS: { name: string; portable: boolean }[] = [{ name: 'portable', portable: true }, ...(CPU_HAS_BF16 ? [{ name: 'AVX512-BF16', portable: false }] : [])];


/** Round to nearest even at bf16, as the kernel rounds x. */
function bf16(v: number): number {
  const u = new Uint32Array(new Float32Array([v]).buffer)[0]!;
  const r = ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16;
  return new Float32Array(new Uint32Array([r]).buffer)[0]!;
}
const bits = (v: number) => new Uint32Array(new Float32Array([v]).buffer)[0]! >>> 16;

let seed = 99;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;

test('bf16Matmul: every mode against float64 sums of the bf16-rounded products, on shapes off every tile and block edge', async () => {
  for (const { name, portable } of KERNELS) {
    // M off the 6-row tile, N off the 4-row tile and the 64-row block, K off 32 and past one 2048 pass.
    for (const [M, N, K] of [[1, 3, 5], [7, 70, 33], [13, 130, 2100], [6, 4, 64]] as const) {
      for (const mode of [MATMUL_MODE.store, MATMUL_MODE.addScaled, MATMUL_MODE.siluGate]) {
        const a = Float32Array.from({ length: M * K }, rand);
        const wf = Array.from({ length: N * K }, () => bf16(rand()));
        const w2f = Array.from({ length: N * K }, () => bf16(rand()));
        const w = Uint16Array.from(wf, bits), w2 = Uint16Array.from(w2f, bits);
        const bias = Float32Array.from({ length: N }, rand), rowScale = Float32Array.from({ length: M }, rand);
        const out = Float32Array.from({ length: M * N }, rand);
        const before = out.slice();
        await withKernel(portable, () =>
          bf16Matmul(a, w, bias, out, M, N, K, mode === MATMUL_MODE.siluGate ? { mode, w2, bias2: bias } : mode === MATMUL_MODE.addScaled ? { mode, rowScale } : { mode }),
        );
        const ar = a.map(bf16); // x as the kernel rounds it, once
        let worst = 0;
        for (let m = 0; m < M; m++) {
          for (let n = 0; n < N; n++) {
            let y = bias[n]!, y2 = bias[n]!;
            for (let k = 0; k < K; k++) {
              const x = ar[m * K + k]!;
              y += x * wf[n * K + k]!;
              y2 += x * w2f[n * K + k]!;
            }
            const want = mode === MATMUL_MODE.store ? y : mode === MATMUL_MODE.addScaled ? before[m * N + n]! + rowScale[m]! * y : (y / (1 + Math.exp(-y))) * y2;
            worst = Math.max(worst, Math.abs(out[m * N + n]! - want) / (1 + Math.abs(want)));
          }
        }
        assert.ok(worst < 2e-5, `${name} ${M}x${N}x${K} mode ${mode}: ${worst}`);
      }
    }
  }
});

test('bf16Matmul: the same bytes on 1, 2 or 3 threads (each thread a share of W\'s rows, the pool growing to 3), with each kernel', async () => {
  const M = 9, N = 137, K = 300;
  const a = Float32Array.from({ length: M * K }, rand), w = Uint16Array.from({ length: N * K }, () => bits(bf16(rand())));
  for (const { name, portable } of KERNELS) {
    const outs = [];
    for (const threads of [1, 2, 3, 2]) {
      const out = new Float32Array(M * N);
      await withKernel(portable, () => bf16Matmul(a, w, null, out, M, N, K, { threads }));
      outs.push(out);
    }
    for (const o of outs.slice(1)) assert.deepEqual(o, outs[0], name);
  }
});

test('bf16Matmul: arrays of the wrong length or type are refused naming the argument', async () => {
  const a = new Float32Array(6), w = new Uint16Array(6), out = new Float32Array(4);
  await withKernel(true, async () => {
    assert.throws(() => bf16Matmul(a, new Uint16Array(5), null, out, 2, 2, 3), /^TypeError: matmul: w must hold N\*K values$/);
    assert.throws(() => bf16Matmul(a, w, new Float32Array(3), out, 2, 2, 3), /^TypeError: matmul: bias must hold N values$/);
    assert.throws(() => bf16Matmul(a, w, null, new Float32Array(3), 2, 2, 3), /^TypeError: matmul: out must hold M\*outCols values$/);
    assert.throws(() => bf16Matmul(a, w, null, out, 2, 2, 3, { mode: MATMUL_MODE.siluGate }), /^TypeError: matmul: w2 is given exactly when mode is 2$/);
    assert.throws(() => bf16Matmul(a, new Float32Array(6) as unknown as Uint16Array, null, out, 2, 2, 3), /^TypeError: matmul: a, out: Float32Array; w, w2: Uint16Array/);
  });
});

test('bf16 unavailable: the reason names what is missing (no module built, no AVX512-BF16)', () => {
  assert.match(whyBf16Unavailable(null, false) ?? '', /^the bf16 kernels were not built \(build\/bf16-matmul\.node is missing/);
  assert.match(whyBf16Unavailable({ supported: () => false }, false) ?? '', /^this CPU has no AVX512-BF16 instructions/);
  assert.equal(whyBf16Unavailable({ supported: () => false }, true), null, 'the portable kernel runs anywhere');
});

test('bf16 states: within 2% of the largest fp32 state per layer and normalised gate rows within 3e-3 (the reference tool\'s own tolerance), with each kernel', async () => {
  const exact = await computeAllHiddenStates(TINY('a'), PROMPTS);
  const gatesExact = await computePromptStates(TINY('a'), PROMPTS);
  for (const { name, portable } of KERNELS) {
    const b = await withKernel(portable, () => computeAllHiddenStates(TINY('a'), PROMPTS, { precision: 'bf16' }));
    let changed = 0;
    for (let p = 0; p < PROMPTS.length; p++) {
      for (let e = 0; e < exact[p]!.length; e++) {
        const d = maxAbsDiff(exact[p]![e]!, b[p]![e]!);
        changed += d;
        const scale = exact[p]![e]!.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        assert.ok(d <= 0.02 * scale, `${name} prompt ${p} entry ${e}: ${d} against largest ${scale}`);
      }
    }
    assert.ok(changed > 0, `${name}: bf16 ran (its states are not the exact ones)`);
    const gates = await withKernel(portable, () => computePromptStates(TINY('a'), PROMPTS, { precision: 'bf16' }));
    for (let p = 0; p < PROMPTS.length; p++) {
      for (let l = 0; l < gates[p]!.length; l++) {
        for (const pick of ['last', 'sum'] as const) {
          const d = maxAbsDiff(normalize(Float64Array.from(gatesExact[p]![l]![pick])), normalize(Float64Array.from(gates[p]![l]![pick])));
          assert.ok(d <= 3e-3, `${name} prompt ${p} layer ${l} ${pick}: ${d}`);
        }
      }
    }
  }
});

test('bf16 states: a prompt gives the same states alone as packed with others (the kernel splits rows, never sums)', async () => {
  for (const { name, portable } of KERNELS) {
    const packed = await withKernel(portable, () => computeAllHiddenStates(TINY('a'), PROMPTS, { precision: 'bf16' }));
    for (const i of [0, 3]) {
      const alone = await withKernel(portable, () => computeAllHiddenStates(TINY('a'), [PROMPTS[i]!], { precision: 'bf16' }));
      for (let e = 0; e < alone[0]!.length; e++) assert.deepEqual(alone[0]![e], packed[i]![e], `${name} prompt ${i} entry ${e}`);
    }
  }
});

test('forwardPrecision bf16: its prompt states are cached apart from fp32 and int8 ones', async () => {
  assert.notEqual(promptStateKey('b', 't', 'x', 3, 'bf16'), promptStateKey('b', 't', 'x', 3));
  assert.notEqual(promptStateKey('b', 't', 'x', 3, 'bf16'), promptStateKey('b', 't', 'x', 3, 'int8'));
  const ws = tempDir();
  const recipeFile = join(ws, 'moe.yml');
  writeFileSync(recipeFile, `base_model: ${TINY('a')}\ngate_mode: hidden\nexperts:\n  - source_model: ${TINY('a')}\n    positive_prompts: ["How do I merge two models?"]\n  - source_model: ${TINY('b')}\n    positive_prompts: ["Once upon a time"]\n`);
  const cacheDir = join(ws, '.moe-cache');
  const { merge } = await runFetch(await readRecipe(recipeFile), join(ws, 'fetch'), { cacheDir, modelBaseDir: ws, root: ws });
  const run = (forwardPrecision: 'fp32' | 'bf16') => withKernel(true, () => runEmbedPrompts(merge, join(ws, `embed-${forwardPrecision}`), { cacheDir, forwardPrecision }));
  assert.equal((await run('fp32')).computed, 2);
  const first = await run('bf16');
  assert.deepEqual([first.computed, first.fromCache], [2, 0], 'the fp32 entries do not answer bf16');
  assert.equal((await run('bf16')).fromCache, 2);
});

test('forwardPrecision bf16 where this machine cannot run it: refused naming the option and the reason', { skip: CPU_HAS_BF16 ? 'this CPU has AVX512-BF16' : false }, async () => {
  await assert.rejects(computePromptStates(TINY('a'), PROMPTS, { precision: 'bf16' }), (e) => /^field forward_precision: forward precision bf16: this CPU has no AVX512-BF16/.test(describeError(e)));
});

for (const family of ['mistral', 'qwen2', 'qwen3', 'llama3-rope', 'llama-fp16']) {
  test(`bf16 states, ${family}: every layer within 2% of the largest of transformers' float32 states (biases, q/k norms, RoPE scaling, fp16 weights)`, async () => {
    const dir = join(FIXTURES, 'families', family);
    const model = join(dir, 'model');
    const ref = await openReference(join(dir, 'reference.safetensors'));
    const json = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { token_ids: number[][] };
    const ids = json.token_ids.slice(0, 3);
    for (const { name, portable } of KERNELS) {
      const states = await withKernel(portable, () => computeAllHiddenStates(model, ids, { precision: 'bf16' }));
      const H = 64;
      for (let i = 0; i < ids.length; i++) {
        const want = await ref.f32(`p${i}.hidden_states`);
        const [E, T] = ref.shape(`p${i}.hidden_states`) as [number, number, number];
        for (let e = 0; e < E; e++) {
          const w = want.subarray(e * T * H, (e + 1) * T * H);
          const scale = w.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
          const d = maxAbsDiff(states[i]![e]!, w);
          assert.ok(d <= 0.02 * scale, `${name} prompt ${i} entry ${e}: ${d} against largest ${scale}`);
        }
      }
    }
  });
}

test('WeightStream: projections in pieces of whole 64-row blocks, in the order a layer takes them (gate with up\'s rows), through a few buffers refilled once a piece\'s products are done; float32 weights rounded to bf16 (nearest even)', async () => {
  const cfg = await readModelConfig(TINY('a'));
  const index = await openWeights(TINY('a'));
  const layers = [0, 1].map((l) => planLayerTensors(cfg, index, l));
  const bf16Of = async (loc: TensorLocation) => new Uint16Array(convertBytes(await readTensorBytes(loc), 'F32', 'BF16').buffer.slice(0));
  const K = layers[0]!.get('up')!.loc.shape[1]!, N = layers[0]!.get('up')!.loc.shape[0]!;
  assert.equal(layers[0]!.get('up')!.loc.dtype, 'F32', 'tiny-a stores float32');
  // One buffer that holds 64 rows of gate and up: the MLP's projections come in pieces of 64 rows, one at a time.
  const w = new WeightStream(layers, false, { slots: 1, slotBytes: 64 * K * 4 });
  w.begin();
  await assert.rejects(w.each(0, 'k', () => []), /^Error: weight stream: k of layer 0 is not next \(q of layer 0\)$/);
  const buffers = new Set<ArrayBufferLike>();
  for (const layer of [0, 1]) {
    for (const role of ['q', 'k', 'v', 'o'] as const) {
      const got: WeightPiece[] = [];
      await w.each(layer, role, (p) => (got.push({ ...p, w: p.w.slice() }), buffers.add(p.w.buffer), []));
      const all = await bf16Of(layers[layer]!.get(role)!.loc);
      assert.deepEqual(got.map((p) => [p.r0, p.r1]), [[0, layers[layer]!.get(role)!.loc.shape[0]!]], `${role}: one piece`);
      assert.deepEqual([...got[0]!.w], [...all]);
    }
    const gate = await bf16Of(layers[layer]!.get('gate')!.loc), up = await bf16Of(layers[layer]!.get('up')!.loc);
    const ranges: number[][] = [];
    // The products of a piece are not awaited before the next is handed over: its buffer waits for them.
    const products: { done: () => void; piece: WeightPiece; values: number[] }[] = [];
    const each = w.each(layer, 'gate', (p) => {
      ranges.push([p.r0, p.r1]);
      assert.deepEqual([...p.w], [...gate.subarray(p.r0 * K, p.r1 * K)], `gate rows ${p.r0}..${p.r1}`);
      assert.deepEqual([...p.w2!], [...up.subarray(p.r0 * K, p.r1 * K)], `up rows ${p.r0}..${p.r1}`);
      buffers.add(p.w.buffer);
      return [new Promise<void>((done) => products.push({ done, piece: p, values: [...p.w] }))];
    });
    // One buffer: the next piece is not read into it (nor handed over) until the first's products are done.
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(products.length, 1);
    assert.deepEqual([...products[0]!.piece.w], products[0]!.values, 'a piece whose products run is not overwritten');
    products[0]!.done();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(products.length, 2);
    products[1]!.done();
    await each;
    assert.deepEqual(ranges, Array.from({ length: Math.ceil(N / 64) }, (_, i) => [i * 64, Math.min(N, i * 64 + 64)]));
    await w.each(layer, 'down', (p) => (buffers.add(p.w.buffer), [Promise.resolve()]));
  }
  assert.equal(buffers.size, 1, 'one buffer, refilled');
  await assert.rejects(w.each(1, 'q', () => []), /^Error: weight stream: q of layer 1 is not next \(nothing left\)$/);
  assert.deepEqual((await w.floats(1)).get('ln2'), decodeFloats(await readTensorBytes(layers[1]!.get('ln2')!.loc), 'F32'));
});

test('WeightStream: a tensor at an odd offset in its file reads as its values; one past the end of its file is refused naming the file and the tensor', async () => {
  const dir = tempDir();
  const values = Uint16Array.from([0x3f80, 0xc000, 0x4040, 0x0001]);
  writeFileSync(join(dir, 'odd.bin'), Buffer.concat([Buffer.from([7]), Buffer.from(values.buffer)]));
  const at = (file: string, offset: number, byteLength: number) => ({ name: 'model.layers.0.self_attn.q_proj.weight', dtype: 'BF16', shape: [2, byteLength / 4], file: join(dir, file), offset, byteLength, begin: offset, end: offset + byteLength });
  const layer = (loc: ReturnType<typeof at>) => new Map(PROJ.map((r) => [r, { role: r, loc }]));
  const w = new WeightStream([layer(at('odd.bin', 1, 8))]);
  w.begin();
  const got: number[][] = [];
  await w.each(0, 'q', (p) => (got.push([...p.w]), []));
  assert.deepEqual(got, [[...values]]);
  writeFileSync(join(dir, 'short.bin'), Buffer.alloc(100));
  const cut = new WeightStream([layer(at('short.bin', 8, 128))]);
  cut.begin();
  await assert.rejects(cut.each(0, 'q', () => []), (e) => describeError(e) === `${join(dir, 'short.bin')}, tensor model.layers.0.self_attn.q_proj.weight: file ended while reading 128 bytes`);
});

test('bf16: a pass prepared ahead (its first layer read) is taken and gives the states of one that is not', async () => {
  await withKernel(!CPU_HAS_BF16, async () => {
    const plain = await computePromptStates(TINY('a'), PROMPTS, { precision: 'bf16' });
    const { taken, bf16Reads } = aheadStats;
    await prepareForward(TINY('a'), { precision: 'bf16' });
    assert.equal(aheadStats.bf16Reads, bf16Reads + 1, 'the first layer\'s reads began with the setup');
    const ahead = await computePromptStates(TINY('a'), PROMPTS, { precision: 'bf16' });
    assert.equal(aheadStats.taken, taken + 1, 'the prepared pass was taken');
    assert.deepEqual(ahead, plain);
  });
});

test('WeightStream: each weight file is opened once for the pass (not once per piece) and closed once its last piece is read, or when the stream is closed', { skip: process.platform !== 'linux' && 'counts open files in /proc/self/fd' }, async () => {
  const dir = tempDir();
  await writeTinyModel(dir, { modelType: 'llama', hidden: 64, layers: 3, heads: 4, kvHeads: 2, intermediate: 192, vocab: 32, dtype: 'BF16', sharded: true });
  const cfg = await readModelConfig(dir);
  const index = await openWeights(dir);
  const layers = [0, 1, 2].map((l) => planLayerTensors(cfg, index, l));
  const files = new Set(layers.flatMap((l) => [...l.values()].map((t) => t.loc.file)));
  assert.equal(files.size, 2, 'two shards');
  // Open descriptors of this process on the weight files.
  const open = () => readdirSync('/proc/self/fd').map((fd) => { try { return readlinkSync(`/proc/self/fd/${fd}`); } catch { return ''; } }).filter((f) => files.has(f));
  const counts: number[] = [];
  // Every open of a weight file through node:fs/promises (as the stream calls it).
  const fsp = require('node:fs/promises') as { open: (...a: unknown[]) => unknown };
  const realOpen = fsp.open;
  const opened: string[] = [];
  fsp.open = (...a: unknown[]) => (files.has(a[0] as string) && opened.push(a[0] as string), realOpen(...a));
  try {
    // Pieces of 64 rows, two buffers: many reads per file.
    const w = new WeightStream(layers, false, { slots: 2, slotBytes: 64 * 64 * 4 });
    w.begin();
    for (const layer of [0, 1, 2]) {
      for (const role of ['q', 'k', 'v', 'o', 'gate', 'down'] as const) {
        await w.each(layer, role, () => (counts.push(open().length), [new Promise((r) => setTimeout(r, 1))]));
      }
    }
  } finally {
    fsp.open = realOpen;
  }
  assert.ok(counts.length > 18, `${counts.length} pieces`);
  assert.equal(opened.length, files.size, `each file opened once: ${opened.length} opens`);
  assert.ok(Math.max(...counts) <= files.size, `at most one descriptor per file while pieces are read: ${counts}`);
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(open(), [], 'closed after the last piece');
  // A stream left part-way (a pass that failed) is closed by close().
  const part = new WeightStream(layers, false, { slots: 2, slotBytes: 64 * 64 * 4 });
  part.begin();
  await part.each(0, 'q', () => []);
  assert.ok(open().length > 0);
  await part.close();
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(open(), []);
});

test("WeightStream: each() calls made at once are served in the order made, the next taking its pieces once the last has taken its own (not once their products are done); one whose role is not next then is refused", async () => {
  const dir = tempDir();
  await writeTinyModel(dir, { modelType: 'llama', hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 192, vocab: 32, dtype: 'BF16' });
  const cfg = await readModelConfig(dir);
  const index = await openWeights(dir);
  const layers = [0, 1].map((l) => planLayerTensors(cfg, index, l));
  const w = new WeightStream(layers);
  w.begin();
  const handed: string[] = [];
  const products: (() => void)[] = [];
  const each = (role: 'q' | 'k' | 'v') => w.each(0, role, (p) => (handed.push(`${role} ${p.r0}..${p.r1}`), [new Promise<void>((done) => products.push(done))]));
  const all = Promise.all([each('q'), each('k'), each('v')]);
  await new Promise((r) => setTimeout(r, 50));
  // Every piece handed over while q's product still runs: k's and v's products are queued behind it.
  assert.deepEqual(handed, ['q 0..64', 'k 0..32', 'v 0..32']);
  for (const done of products) done();
  await all;
  await assert.rejects(Promise.all([w.each(0, 'gate', () => []), w.each(0, 'o', () => [])]), /^Error: weight stream: gate of layer 0 is not next \(o of layer 0\)$/);
  await w.close();
});
