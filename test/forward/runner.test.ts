import { mock, test } from 'node:test';
import '../../libs/forward/no-telemetry'; // before onnxruntime-node, as libs/forward/backend.ts does
import * as ort from 'onnxruntime-node';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync } from 'node:fs';
import { SafetensorsWeights, convertBytes, decodeFloats, readTensorBytes, writeShard } from '../../libs/safetensors';
import { tmpdir } from 'node:os';
import { writeTinyModel } from '../../tools/testing/tiny-models';
import { availableBackends, computeAllHiddenStates, computePadStates, computePromptStates, computeRouterInputs, type ForwardProgress } from '../../libs/forward';
import { LOAD_CHUNK_BYTES, LayerWeights, READS_AHEAD, WeightBuffer, widenInPlace } from '../../libs/forward/run';
import { FP32_KERNEL_ENV } from '../../libs/forward/bf16';
import { planLayerTensors, weightInput } from '../../libs/forward/layer-graph';
import { openWeights, readModelConfig } from '../../libs/model-folder';
import { assumeHugeMalloc } from '../../libs/forward/huge-pages';
import { floatTensor, sessionFromBytes } from '../../libs/forward/backend';
import { encodeModel } from '../../libs/forward/onnx-proto';
import { OnnxDtype } from '../../libs/forward/onnx-proto';
import { FLOAT_CAP, WasmFloatBuffer, useFloatWasm } from '../../libs/safetensors/float-wasm';
import { ForgeError } from '../../libs/errors';
import { FIXTURES } from '../helpers/forward-fixtures';
import { maxAbsDiff } from '../helpers/forward-reference';

const TINY_A = join(FIXTURES, 'tiny-llama', 'tiny-a');

test('progress reports each layer that runs (L-1 of them: the last output is not a layer input), per pack of prompts', async () => {
  const seen: ForwardProgress[] = [];
  const states = await computePromptStates(TINY_A, [[0, 5, 6], [0, 9]], { onProgress: (p) => seen.push(p) });
  assert.deepEqual(seen, [{ layer: 0, layers: 1, promptsDone: 2, prompts: 2 }]);
  assert.equal(states.length, 2);
  assert.equal(states[0]!.length, 2);
  assert.equal(states[1]![0]!.count, 2);
  assert.equal(states[1]![0]!.last.length, 64);
  seen.length = 0;
  await computePromptStates(TINY_A, [[0, 5, 6], [0, 9]], { onProgress: (p) => seen.push(p), packTokens: 1 });
  assert.deepEqual(seen.map((p) => p.promptsDone), [1, 2], 'one prompt at a time');
});

test('packed prompts give the states of prompts run one at a time (within 1e-5), sliding window and dynamic RoPE included', async () => {
  const prompts = [[0, 42, 506, 359, 81, 393, 7, 7, 12], [0, 9], [0, 300, 301], [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]];
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-pack-'));
  try {
    const models = [TINY_A];
    for (const [name, extra] of [['window', { slidingWindow: 4 }], ['dynamic', { ropeScaling: { rope_type: 'dynamic', factor: 2, original_max_position_embeddings: 8 }, dtype: 'BF16' }]] as const) {
      await writeTinyModel(join(dir, name), { modelType: name === 'window' ? 'mistral' : 'llama', hidden: 32, layers: 3, heads: 4, kvHeads: 2, intermediate: 48, vocab: 512, ...extra });
      models.push(join(dir, name));
    }
    for (const model of models) {
      const alone = await computeAllHiddenStates(model, prompts, { packTokens: 1 });
      for (const budget of [1024, 12]) {
        const packed = await computeAllHiddenStates(model, prompts, { packTokens: budget });
        for (let p = 0; p < prompts.length; p++) {
          for (let e = 0; e < alone[p]!.length; e++) {
            const d = maxAbsDiff(packed[p]![e]!, alone[p]![e]!);
            assert.ok(d <= 1e-5, `${model} prompt ${p} entry ${e} (budget ${budget}): ${d}`);
          }
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a prompt gives the same bits alone as packed, a one-token prompt too (a lone token runs with a twin), so a cold build and an edit agree', async () => {
  const prompts = [[0, 42, 506, 359, 81], [7], [0, 9], [300]];
  for (const model of [TINY_A, join(FIXTURES, 'families', 'mistral', 'model')]) {
    const packed = await computeAllHiddenStates(model, prompts, { packTokens: 1024 });
    const alone = await computeAllHiddenStates(model, prompts, { packTokens: 1 });
    const seen: ForwardProgress[] = [];
    const single = await computeAllHiddenStates(model, [[7]], { onProgress: (p) => seen.push(p) });
    assert.ok(seen.every((p) => p.prompts === 1 && p.promptsDone === 1), 'the twin is not a prompt of its own');
    assert.equal(single.length, 1);
    for (let p = 0; p < prompts.length; p++) {
      for (let e = 0; e < packed[p]!.length; e++) {
        assert.deepEqual(Buffer.from(alone[p]![e]!.buffer, alone[p]![e]!.byteOffset, alone[p]![e]!.byteLength), Buffer.from(packed[p]![e]!.buffer, packed[p]![e]!.byteOffset, packed[p]![e]!.byteLength), `${model} prompt ${p} entry ${e}`);
      }
    }
    for (let e = 0; e < packed[1]!.length; e++) assert.deepEqual([...single[0]![e]!], [...packed[1]![e]!], `${model} [7] alone in its call, entry ${e}`);
  }
});

test('bf16 and f16 weights give exactly the states of their float32 values (onnxruntime\'s Gemm for both: the native kernel sums in another order)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-dtypes-'));
  process.env[FP32_KERNEL_ENV] = 'onnxruntime';
  try {
    for (const dtype of ['BF16', 'F16'] as const) {
      const narrow = join(dir, dtype);
      await writeTinyModel(narrow, { modelType: 'qwen2', hidden: 32, layers: 3, heads: 4, kvHeads: 2, intermediate: 48, vocab: 512, dtype });
      // The same values widened to float32, written as a float32 model.
      const wide = join(dir, `${dtype}-as-F32`);
      cpSync(narrow, wide, { recursive: true });
      const w = await SafetensorsWeights.openFolder(narrow);
      const specs = w.names().map((name) => ({ name, dtype: 'F32', shape: w.get(name).shape }));
      await writeShard(join(wide, 'model.safetensors'), specs, async function* (t) {
        yield convertBytes(await readTensorBytes(w.get(t.name)), dtype, 'F32');
      });
      const ids = [[0, 42, 506, 359, 81], [0, 9]];
      const a = await computeAllHiddenStates(narrow, ids);
      const b = await computeAllHiddenStates(wide, ids);
      for (let p = 0; p < ids.length; p++) for (let e = 0; e < a[p]!.length; e++) assert.equal(maxAbsDiff(a[p]![e]!, b[p]![e]!), 0, `${dtype} prompt ${p} entry ${e}`);
    }
  } finally {
    delete process.env[FP32_KERNEL_ENV];
    rmSync(dir, { recursive: true, force: true });
  }
});

test('no prompts: one empty result per prompt, no session', async () => {
  assert.deepEqual(await computePromptStates(TINY_A, []), []);
});

test('webgpu, where bundled: either it runs and agrees with the CPU, or it fails as a ForgeError naming the device', async (t) => {
  if (!availableBackends().includes('webgpu')) return t.skip('webgpu not bundled on this platform');
  const ids = [[0, 42, 506, 359, 81]];
  const cpu = await computePromptStates(TINY_A, ids);
  try {
    const gpu = await computePromptStates(TINY_A, ids, { device: 'webgpu' });
    assert.ok(maxAbsDiff(gpu[0]![1]!.last, cpu[0]![1]!.last) < 1e-3);
  } catch (e) {
    assert.ok(e instanceof ForgeError, String(e));
    assert.equal(e.code, 'device_failed');
    assert.match(e.message, /device "webgpu" could not start an onnxruntime session/);
  }
});

test('16-bit weights widen in place to their float32 values, odd and even lengths alike', () => {
  // Both the SIMD kernels (blocks of FLOAT_CAP values: lengths across several blocks) and the JavaScript loop.
  for (const [dtype, wasm] of [['BF16', true], ['F16', true], ['BF16', false], ['F16', false]] as const) {
    useFloatWasm(wasm);
    for (const n of [1, 2, 5, 6, 7, 1000, 1001, 2 * FLOAT_CAP + 3]) {
      const bits = Uint16Array.from({ length: n }, (_, i) => (dtype === 'BF16' ? 0x3f80 : 0x3c00) + ((i * 37) % 200) - (i % 3 === 0 ? 0x8000 - 0x7f00 : 0));
      const want = convertBytes(Buffer.from(bits.buffer), dtype, 'F32');
      const buf = new Float32Array(n);
      new Uint16Array(buf.buffer).set(bits, n); // the upper half, as the weight reader leaves it
      widenInPlace(buf, dtype);
      assert.deepEqual(Buffer.from(buf.buffer), want, `${dtype} n=${n} wasm=${wasm}`);
    }
  }
  useFloatWasm(true);
});

test('weights widened in WebAssembly memory give exactly the states of plain memory, through the kernels or in JavaScript (sizes off the kernels\' rounds)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-widen-'));
  try {
    for (const dtype of ['BF16', 'F16'] as const) {
      // hidden 40 and intermediate 50: norms, projections and their tails are not multiples of 16 values.
      const model = join(dir, dtype);
      await writeTinyModel(model, { modelType: 'qwen2', hidden: 40, layers: 4, heads: 4, kvHeads: 2, intermediate: 50, vocab: 300, dtype, seed: 3 });
      const ids = [[0, 42, 206, 259, 81], [0, 9]];
      assumeHugeMalloc(false);
      let wasm: Float32Array[][], kernels: Float32Array[][], plain: Float32Array[][];
      try {
        wasm = await computeAllHiddenStates(model, ids);
        // Plain memory (as where malloc gives huge pages), widened through the kernels' own memory.
        assumeHugeMalloc(true);
        kernels = await computeAllHiddenStates(model, ids);
        useFloatWasm(false);
        plain = await computeAllHiddenStates(model, ids);
      } finally {
        useFloatWasm(true);
        assumeHugeMalloc(undefined);
      }
      for (let p = 0; p < ids.length; p++) {
        for (let e = 0; e < wasm[p]!.length; e++) {
          assert.equal(maxAbsDiff(wasm[p]![e]!, plain[p]![e]!), 0, `${dtype} prompt ${p} entry ${e}`);
          assert.equal(maxAbsDiff(wasm[p]![e]!, kernels[p]![e]!), 0, `${dtype} prompt ${p} entry ${e} (plain memory, kernels)`);
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a weight buffer reused for tensors of other sizes holds only the latest tensor\'s values, in WebAssembly memory or not', () => {
  // SIMD kernels on and a WebAssembly memory; kernels on and plain memory (huge-page malloc); all JavaScript.
  for (const [wasm, memory] of [[true, true], [true, false], [false, true]] as const) {
    useFloatWasm(wasm);
    try {
      const slot = new WeightBuffer(memory);
      for (const [n, dtype] of [[5000, 'BF16'], [33, 'F16'], [7, 'F32'], [12_345, 'BF16'], [100, 'F16']] as const) {
        const values = Float32Array.from({ length: n }, (_, i) => (i % 13) - 6 + i / 64);
        const stored = dtype === 'F32' ? Buffer.from(values.buffer) : convertBytes(Buffer.from(values.buffer), 'F32', dtype);
        const view = slot.floats(n);
        assert.equal(view.length, n);
        // As the weight reader leaves them: float32 bytes at the start, 16-bit ones in the upper half.
        Buffer.from(view.buffer, view.byteOffset, 4 * n).set(stored, dtype === 'F32' ? 0 : 2 * n);
        if (dtype !== 'F32') slot.widen(view, dtype);
        assert.ok(Buffer.from(view.buffer, view.byteOffset, 4 * n).equals(dtype === 'F32' ? stored : convertBytes(stored, dtype, 'F32')), `wasm=${wasm} memory=${memory} ${dtype} n=${n}`);
      }
    } finally {
      useFloatWasm(true);
    }
  }
});

test('a weight buffer loads stored bytes from another buffer as their float32 values, reused across sizes', () => {
  for (const [wasm, memory] of [[true, true], [true, false], [false, true], [false, false]] as const) {
    useFloatWasm(wasm);
    try {
      const slot = new WeightBuffer(memory);
      for (const [n, dtype] of [[5000, 'BF16'], [33, 'F16'], [7, 'F32'], [2 * FLOAT_CAP + 5, 'BF16'], [100, 'F16'], [12_345, 'F32']] as const) {
        const values = Float32Array.from({ length: n }, (_, i) => (i % 13) - 6 + i / 64);
        const stored = dtype === 'F32' ? Buffer.from(values.buffer) : convertBytes(Buffer.from(values.buffer), 'F32', dtype);
        const view = slot.load(stored, dtype);
        assert.equal(view.length, n);
        assert.ok(Buffer.from(view.buffer, view.byteOffset, 4 * n).equals(dtype === 'F32' ? stored : convertBytes(stored, dtype, 'F32')), `wasm=${wasm} memory=${memory} ${dtype} n=${n}`);
      }
    } finally {
      useFloatWasm(true);
    }
  }
});

/** Scheduler state of each of this process's threads ('R' running or runnable, 'S' asleep...), by thread id. */
function threadStates(): Map<string, string> {
  const out = new Map<string, string>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      out.set(tid, stat[stat.lastIndexOf(')') + 2]!);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

test('onnxruntime\'s worker threads do not spin after a run (the next layer\'s reading and widening need the cores)', { skip: !existsSync('/proc/self/task') && 'needs /proc (Linux)' }, async () => {
  const K = 512, N = 4096;
  const model = encodeModel({
    opset: 17,
    graph: {
      name: 'gemm', nodes: [{ op: 'Gemm', inputs: ['x', 'w'], outputs: ['y'], attrs: { transB: 1 } }], initializers: [],
      inputs: [{ name: 'x', dtype: OnnxDtype.FLOAT, shape: ['T', K] }, { name: 'w', dtype: OnnxDtype.FLOAT, shape: [N, K] }],
      outputs: [{ name: 'y', dtype: OnnxDtype.FLOAT, shape: ['T', N] }],
    },
  });
  // What the session is asked for: no spinning, a deterministic check whatever the machine's load.
  const create = mock.method(ort.InferenceSession, 'create');
  const before = new Set(threadStates().keys());
  const session = await sessionFromBytes(model, { device: 'cpu', threads: 2 });
  create.mock.restore();
  try {
    const opts = create.mock.calls[0]!.arguments[1] as ort.InferenceSession.SessionOptions;
    assert.equal(opts.intraOpNumThreads, 2);
    assert.deepEqual((opts.extra as { session?: unknown }).session, { intra_op: { allow_spinning: '0' } });
    // And what onnxruntime does with it. The session's own pool: threads: 2 is the caller plus one worker.
    const workers = [...threadStates().keys()].filter((t) => !before.has(t));
    assert.ok(workers.length >= 1, 'the session started a worker thread');
    const feeds = { x: floatTensor(new Float32Array(64 * K).fill(1), [64, K]), w: floatTensor(new Float32Array(N * K).fill(0.5), [N, K]) };
    // A spinning worker stays runnable ('R') for many samples after each run, then sleeps; one that does not
    // spin is asleep ('S') from the next sample on (the first may catch it woken for the run and not yet
    // scheduled, on a busy machine).
    const seen: string[][] = [];
    for (let i = 0; i < 3; i++) {
      await session.run(feeds);
      const run: string[] = [];
      for (let k = 0; k < 20; k++) {
        const st = threadStates();
        run.push(workers.map((t) => st.get(t) ?? '-').join(''));
        await new Promise((r) => setTimeout(r, 5));
      }
      seen.push(run);
    }
    assert.ok(seen.every((run) => run.slice(1).every((s) => !s.includes('R'))), `worker states sampled after each run: ${seen.map((r) => r.join(',')).join(' | ')}`);
  } finally {
    await session.release();
  }
});

test('a layer loads a chunk at a time into its float32 values: chunks that split tensors, tails off the kernels\' rounds, every memory path', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-load-'));
  try {
    for (const dtype of ['BF16', 'F16', 'F32'] as const) {
      // hidden 40, intermediate 50: no tensor is a multiple of 16 values or of a chunk.
      const model = join(dir, dtype);
      await writeTinyModel(model, { modelType: 'qwen2', hidden: 40, layers: 2, heads: 4, kvHeads: 2, intermediate: 50, vocab: 300, dtype, seed: 5 });
      const cfg = await readModelConfig(model);
      const weights = await openWeights(model);
      const want = new Map<string, Float32Array>();
      for (const l of [0, 1]) for (const t of planLayerTensors(cfg, weights, l).values()) want.set(`${l}.${t.role}`, decodeFloats(await readTensorBytes(t.loc), t.loc.dtype));
      for (const [wasm, memory] of [[true, true], [true, false], [false, true]] as const) {
        useFloatWasm(wasm);
        assumeHugeMalloc(!memory);
        try {
          // Chunks read one at a time, or several ahead of the widening (each into its own place in the buffers).
          for (const [chunk, ahead] of [[64, 1], [64, READS_AHEAD], [64, 7], [192, 1], [192, 3], [LOAD_CHUNK_BYTES, READS_AHEAD]] as const) {
            const lw = new LayerWeights(chunk, ahead);
            // Two layers through the same buffers: the second must not keep any of the first's values.
            for (const l of [0, 1]) {
              const layer = planLayerTensors(cfg, weights, l);
              const feeds = await lw.load(layer, WasmFloatBuffer.prepare());
              for (const t of layer.values()) {
                const got = feeds[weightInput(t.role)]!.data as Float32Array;
                assert.deepEqual(got, want.get(`${l}.${t.role}`), `${dtype} layer ${l} ${t.role} chunk ${chunk} ahead ${ahead} wasm=${wasm} memory=${memory}`);
              }
            }
          }
        } finally {
          useFloatWasm(true);
          assumeHugeMalloc(undefined);
        }
      }
    }
    assert.throws(() => new LayerWeights(100), /chunk of 100 bytes: a positive multiple of 64 is needed/);
    assert.throws(() => new LayerWeights(64, 0), /0 reads ahead: a whole number from 1 is needed/);
    assert.ok(READS_AHEAD > 1, 'a layer is read several chunks at a time');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a layer whose file ends before a tensor does is refused, naming the file and tensor', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-load-'));
  try {
    const model = join(dir, 'm');
    await writeTinyModel(model, { modelType: 'llama', hidden: 32, layers: 1, heads: 4, kvHeads: 2, intermediate: 48, vocab: 100, dtype: 'BF16', seed: 1 });
    const layer = planLayerTensors(await readModelConfig(model), await openWeights(model), 0);
    const q = layer.get('q')!;
    const file = q.loc.file;
    // The header was read when the model was opened; the file is cut short after that.
    truncateSync(file, q.loc.offset + 10);
    await assert.rejects(new LayerWeights(64).load(layer, WasmFloatBuffer.prepare()), (e: Error) => {
      assert.ok(e instanceof ForgeError);
      assert.match(e.message, /file ended while reading \d+ bytes/);
      assert.match(e.message, new RegExp(file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
      return true;
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a layer whose MLP is over twice the piece size runs its attention, then its MLP in pieces: the same states bit for bit', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moe-forge-pieces-'));
  try {
    // intermediate 80 x hidden 48: 46 KB of MLP floats; pieces of 4 KB split gate/up into 11 channel pieces and
    // down_proj into 3 row pieces (uneven: 80 and 48 rows in pieces of ~8 and ~21).
    const model = join(dir, 'm');
    await writeTinyModel(model, { modelType: 'qwen2', hidden: 48, layers: 3, heads: 4, kvHeads: 2, intermediate: 80, vocab: 300, dtype: 'BF16', seed: 3 });
    const ids = [[0, 42, 206, 259, 81], [0, 9], [5, 6, 7, 8, 9, 10, 11]];
    const whole = await computeAllHiddenStates(model, ids);
    const pieced = await computeAllHiddenStates(model, ids, { mlpBytes: 4000, packTokens: 6 });
    for (let p = 0; p < ids.length; p++) for (let e = 0; e < whole[p]!.length; e++) assert.deepEqual(pieced[p]![e], whole[p]![e], `prompt ${p} entry ${e}`);
    const router = await computeRouterInputs(model, ids);
    const routerPieced = await computeRouterInputs(model, ids, { mlpBytes: 4000 });
    assert.deepEqual(routerPieced, router);
    // The pad state (no attention term) runs a single token: within float rounding of the whole layer.
    const pad = await computePadStates(model, 0);
    const padPieced = await computePadStates(model, 0, { mlpBytes: 4000 });
    for (let l = 0; l < pad.length; l++) assert.ok(maxAbsDiff(pad[l]!, padPieced[l]!) < 1e-5, `pad layer ${l}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
