/**
 * The native pass's attention (native/bf16-matmul.c, nativeAttention): qwen3's per-head norms, RoPE and each
 * prompt's causal softmax attention between the native projections, in place of onnxruntime's attention graph.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { usePortableBf16 } from '../../libs/forward';
import { nativeAttention, wideUnavailable } from '../../libs/forward/bf16';
import { sessionFromBytes, floatTensor } from '../../libs/forward/backend';
import { CORE_IO, buildAttentionCoreModel, weightInput, type LayerTensor } from '../../libs/forward/layer-graph';
import { encodeModel } from '../../libs/forward/onnx-proto';
import { packInputs, packTables } from '../../libs/forward/run';
import type { ModelConfig } from '../../libs/model-folder';
import { withKernel } from '../helpers/kernels';
import { TINY } from '../helpers/tmp';

const CPU_HAS_WIDE = (() => {
  usePortableBf16(false);
  return wideUnavailable() === null;
})();
const KERNELS = [{ name: 'portable', portable: true }, ...(CPU_HAS_WIDE ? [{ name: 'AVX-512', portable: false }] : [])];

let seed = 11;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;
const randoms = (n: number, scale = 1) => Float32Array.from({ length: n }, () => rand() * 2 * scale);

/** A config with what the attention reads (RoPE from ropeTheta, no scaling). */
function config(o: { nH: number; nKV: number; D: number; window?: number | null }): ModelConfig {
  return { numHeads: o.nH, numKvHeads: o.nKV, headDim: o.D, hiddenSize: o.nH * o.D, rmsNormEps: 1e-6, ropeTheta: 10000, ropeScaling: null, slidingWindow: o.window ?? null, maxPositionEmbeddings: 4096 } as unknown as ModelConfig;
}

/** onnxruntime's attention graph (the pass's before the native one, and still the onnxruntime path's) on the same inputs. */
async function onnxAttention(cfg: ModelConfig, lengths: number[], q: Float32Array, k: Float32Array, v: Float32Array, norms: { q: Float32Array | null; k: Float32Array | null }): Promise<Float32Array> {
  const tensors = new Map<string, LayerTensor>();
  const loc = (shape: number[]) => ({ loc: { shape } }) as unknown as LayerTensor;
  if (norms.q) tensors.set('q_norm', loc([cfg.headDim]));
  if (norms.k) tensors.set('k_norm', loc([cfg.headDim]));
  const session = await sessionFromBytes(encodeModel(buildAttentionCoreModel(cfg, tensors)), { device: 'cpu', threads: 2 });
  try {
    const N = lengths.reduce((a, b) => a + b, 0);
    const inputs = packInputs(cfg, lengths.map((T) => ({ ids: new Array<number>(T).fill(1), attnGate: 1 })));
    const feeds = { ...inputs, [CORE_IO.q]: floatTensor(q, [N, cfg.numHeads * cfg.headDim]), [CORE_IO.k]: floatTensor(k, [N, cfg.numKvHeads * cfg.headDim]), [CORE_IO.v]: floatTensor(v, [N, cfg.numKvHeads * cfg.headDim]) };
    delete (feeds as Record<string, unknown>)['gate'];
    for (const [r, w] of [['q_norm', norms.q], ['k_norm', norms.k]] as const) if (w) (feeds as Record<string, unknown>)[weightInput(r)] = floatTensor(w, [w.length]);
    const out = (await session.run(feeds))[CORE_IO.ctx]!;
    return Float32Array.from(out.data as Float32Array);
  } finally {
    await session.release();
  }
}

async function native(cfg: ModelConfig, lengths: number[], q: Float32Array, k: Float32Array, v: Float32Array, norms: { q: Float32Array | null; k: Float32Array | null }, threads = 2): Promise<Float32Array> {
  const tables = packTables(cfg, lengths.map((T) => ({ ids: new Array<number>(T).fill(1), attnGate: 1 })));
  const ctx = new Float32Array(q.length).fill(NaN);
  await nativeAttention(cfg, q, k, v, tables, norms, ctx, threads);
  return ctx;
}

const relErr = (a: Float32Array, b: Float32Array) => {
  let d = 0, m = 0;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i]! - b[i]!));
    m = Math.max(m, Math.abs(b[i]!));
  }
  return d / m;
};

const CASES = [
  { name: 'grouped queries (llama)', nH: 8, nKV: 2, D: 16, lengths: [9, 1, 23, 5], norms: false, window: null },
  { name: 'qwen3 per-head norms, D 64', nH: 4, nKV: 4, D: 64, lengths: [17, 3], norms: true, window: null },
  { name: 'a sliding window shorter than the prompts (mistral)', nH: 4, nKV: 1, D: 32, lengths: [20, 7], norms: false, window: 6 },
  { name: 'D not a multiple of 16', nH: 6, nKV: 3, D: 10, lengths: [12], norms: false, window: null },
];

for (const c of CASES) {
  test(`nativeAttention, ${c.name}: within 1e-5 of onnxruntime's attention graph, with each kernel`, async () => {
    const cfg = config({ nH: c.nH, nKV: c.nKV, D: c.D, window: c.window });
    const N = c.lengths.reduce((a, b) => a + b, 0);
    const q = randoms(N * c.nH * c.D, 2), k = randoms(N * c.nKV * c.D, 2), v = randoms(N * c.nKV * c.D);
    const norms = c.norms ? { q: randoms(c.D, 1).map((x) => 1 + x), k: randoms(c.D, 1).map((x) => 1 + x) } : { q: null, k: null };
    const want = await onnxAttention(cfg, c.lengths, q, k, v, norms);
    const got: Float32Array[] = [];
    for (const kernel of KERNELS) {
      const ctx = await withKernel(kernel.portable, () => native(cfg, c.lengths, q, k, v, norms));
      assert.ok(relErr(ctx, want) < 1e-5, `${kernel.name}: ${relErr(ctx, want)}`);
      got.push(ctx);
    }
    // The portable loop and the AVX-512 build of it sum in the same order: the same bits.
    if (got.length === 2) assert.deepEqual(got[1], got[0]);
  });
}

test('nativeAttention: a prompt gets the same bits alone or packed with others, on 1 or 3 threads', async () => {
  const cfg = config({ nH: 8, nKV: 4, D: 32 });
  const lengths = [13, 30, 2, 8];
  const row = cfg.numHeads * cfg.headDim, kvRow = cfg.numKvHeads * cfg.headDim;
  const N = lengths.reduce((a, b) => a + b, 0);
  const q = randoms(N * row), k = randoms(N * kvRow), v = randoms(N * kvRow);
  for (const kernel of KERNELS) {
    await withKernel(kernel.portable, async () => {
      const packed = await native(cfg, lengths, q, k, v, { q: null, k: null }, 3);
      let at = 0;
      for (const T of lengths) {
        const alone = await native(cfg, [T], q.slice(at * row, (at + T) * row), k.slice(at * kvRow, (at + T) * kvRow), v.slice(at * kvRow, (at + T) * kvRow), { q: null, k: null }, 1);
        assert.deepEqual(alone, packed.slice(at * row, (at + T) * row), `${kernel.name}: the prompt at row ${at}`);
        at += T;
      }
    });
  }
});

test('nativeAttention: arguments of the wrong shape are refused naming them', async () => {
  const cfg = config({ nH: 4, nKV: 2, D: 8 });
  const tables = packTables(cfg, [{ ids: [1, 2, 3], attnGate: 1 }]);
  const q = new Float32Array(3 * 32), kv = new Float32Array(3 * 16), ctx = new Float32Array(3 * 32);
  const call = (o: Partial<{ q: Float32Array; k: Float32Array; ctx: Float32Array; segs: Int32Array; qn: Float32Array; cfg: ModelConfig }>) =>
    withKernel(true, async () => nativeAttention(o.cfg ?? cfg, o.q ?? q, o.k ?? kv, kv, { ...tables, segs: o.segs ?? tables.segs }, { q: o.qn ?? null, k: null }, o.ctx ?? ctx, 2));
  await assert.rejects(call({ q: new Float32Array(3 * 31) }), /attention: q and ctx must hold T\*nH\*D values/);
  await assert.rejects(call({ k: new Float32Array(3 * 15) }), /attention: k and v must hold T\*nKV\*D values/);
  await assert.rejects(call({ segs: Int32Array.from([1, 3]) }), /attention: each segment \[start, length\] must lie in the T rows/);
  await assert.rejects(call({ qn: new Float32Array(7) }), /attention: qNorm and kNorm must hold D values/);
  await assert.rejects(call({ cfg: config({ nH: 4, nKV: 3, D: 8 }) }), /attention: nH must be a multiple of nKV/);
});

test('a native pass loads nothing of onnxruntime (its attention is native too)', () => {
  // A fresh process: this one has loaded onnxruntime for the tests above.
  const script = `
    const { computePromptStates } = require(${JSON.stringify(join(__dirname, '../../libs/forward'))});
    computePromptStates(${JSON.stringify(TINY('a'))}, [[1, 5, 9, 2]], { precision: 'bf16' }).then((s) => {
      const loaded = Object.keys(require.cache).filter((f) => f.includes('onnxruntime'));
      process.stdout.write(JSON.stringify({ layers: s[0].length, loaded }));
    });`;
  const out = JSON.parse(execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { env: { ...process.env, MOE_FORGE_BF16_KERNEL: 'portable', ORT_DISABLE_TELEMETRY: '1' }, encoding: 'utf8' }));
  assert.ok(out.layers > 0);
  assert.deepEqual(out.loaded, []);
});
