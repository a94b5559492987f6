/**
 * The fp32 pass on bf16 weights: its projections in native/bf16-matmul.c's wide kernel (x kept float32, each bf16
 * weight widened exactly, products summed in float32), where the CPU has AVX-512 or (tests) with the portable
 * kernel; onnxruntime's Gemm elsewhere, for weights stored otherwise, or when MOE_FORGE_FP32_KERNEL=onnxruntime.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { computeAllHiddenStates, computePromptStates, computeRouterInputs, usePortableBf16 } from '../../libs/forward';
import { FP32_KERNEL_ENV, MATMUL_MODE, PIECE_BYTES_ENV, bf16Matmul, wideUnavailable, whyWideUnavailable, xTilesLength } from '../../libs/forward/bf16';
import { aheadStats, passStats, prepareForward } from '../../libs/forward/run';
import { normalize } from '../../libs/gates';
import { writeTinyModel } from '../../tools/testing/tiny-models';
import { convertBytes, decodeFloats } from '../../libs/safetensors';
import { maxAbsDiff } from '../helpers/forward-reference';
import { FIXTURES, openReference } from '../helpers/forward-fixtures';
import { TINY, tempDir } from '../helpers/tmp';
import { withKernel } from '../helpers/kernels';

const CPU_HAS_WIDE = (() => {
  usePortableBf16(false);
  return wideUnavailable() === null;
})();
/** Each wide kernel this machine can run: the portable one always, the AVX-512 one where the CPU has it. */
const KERNELS: { name: string; portable: boolean }[] = [{ name: 'portable', portable: true }, ...(CPU_HAS_WIDE ? [{ name: 'AVX-512', portable: false }] : [])];


async function withOnnxruntime<T>(f: () => Promise<T>): Promise<T> {
  process.env[FP32_KERNEL_ENV] = 'onnxruntime';
  try {
    return await f();
  } finally {
    delete process.env[FP32_KERNEL_ENV];
  }
}

let seed = 7;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;
const bits = (v: number) => new Uint32Array(new Float32Array([v]).buffer)[0]! >>> 16;
const fromBits = (b: number) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]!;

const PROMPTS = [[0, 42, 506, 359, 81, 393, 7, 7, 12], [0, 9], [0, 300, 301, 17, 18], [5]];

/** A llama-shaped model stored bf16 (the wide pass's input), in a fresh folder. */
async function bf16Model(seed = 1): Promise<string> {
  const dir = join(tempDir(), 'bf16');
  await writeTinyModel(dir, { modelType: 'llama', hidden: 64, layers: 3, heads: 4, kvHeads: 2, intermediate: 96, vocab: 512, dtype: 'BF16', seed });
  return dir;
}

test('wide matmul: every mode against float64 sums of the float32 x times the widened weights, on shapes off every tile, block and pass edge', async () => {
  for (const { name, portable } of KERNELS) {
    // M off the 16-row vector and the 80-row tile, N off the 4-row tile and 64-row block, K off 32 and past one pack of
    // 2048 values (KPW) and its passes of 128 (KCW).
    for (const [M, N, K] of [[1, 3, 5], [7, 70, 33], [13, 130, 2100], [6, 4, 64], [85, 9, 300], [33, 5, 129]] as const) {
      for (const mode of [MATMUL_MODE.store, MATMUL_MODE.addScaled, MATMUL_MODE.siluGate]) {
        const a = Float32Array.from({ length: M * K }, rand);
        const w = Uint16Array.from({ length: N * K }, () => bits(rand())), w2 = Uint16Array.from({ length: N * K }, () => bits(rand()));
        const bias = Float32Array.from({ length: N }, rand), rowScale = Float32Array.from({ length: M }, rand);
        const out = Float32Array.from({ length: M * N }, rand);
        const before = out.slice();
        const opts = mode === MATMUL_MODE.siluGate ? { mode, w2, bias2: bias } : mode === MATMUL_MODE.addScaled ? { mode, rowScale } : { mode };
        await withKernel(portable, () => bf16Matmul(a, w, bias, out, M, N, K, { ...opts, arithmetic: 'wide' }));
        const wf = Float32Array.from(w, fromBits), w2f = Float32Array.from(w2, fromBits);
        let worst = 0;
        for (let m = 0; m < M; m++) {
          for (let n = 0; n < N; n++) {
            let y = bias[n]!, y2 = bias[n]!;
            for (let k = 0; k < K; k++) {
              y += a[m * K + k]! * wf[n * K + k]!; // x not rounded: float32 as given
              y2 += a[m * K + k]! * w2f[n * K + k]!;
            }
            const want = mode === MATMUL_MODE.store ? y : mode === MATMUL_MODE.addScaled ? before[m * N + n]! + rowScale[m]! * y : (y / (1 + Math.exp(-y))) * y2;
            worst = Math.max(worst, Math.abs(out[m * N + n]! - want) / (1 + Math.abs(want)));
          }
        }
        // bf16 rounding of x would be ~4e-3 here: this bound tells the wide sums from bf16's.
        assert.ok(worst < 2e-5, `${name} ${M}x${N}x${K} mode ${mode}: ${worst}`);
      }
    }
  }
});

test('wide matmul on float16 weights: every mode against float64 sums of the halves\' exact values (subnormal halves included)', async () => {
  for (const { name, portable } of KERNELS) {
    // Off the tile edges, and K past one pass of 2048 values (the float16 path differs only in how a block is widened).
    for (const [M, N, K] of [[1, 3, 5], [7, 70, 33], [6, 9, 2100]] as const) {
      for (const mode of [MATMUL_MODE.store, MATMUL_MODE.addScaled, MATMUL_MODE.siluGate]) {
        // Every 7th weight is tiny: below float16's smallest normal (6.1e-5), a subnormal half.
        const halves = (n: number) => {
          const f = Float32Array.from({ length: n }, (_, i) => (i % 7 === 0 ? rand() * 1e-5 : rand()));
          const bytes = convertBytes(Buffer.from(f.buffer), 'F32', 'F16');
          return { w: new Uint16Array(bytes.buffer, bytes.byteOffset, n), values: decodeFloats(bytes, 'F16') };
        };
        const a = Float32Array.from({ length: M * K }, rand);
        const { w, values: wf } = halves(N * K), { w: w2, values: w2f } = halves(N * K);
        const bias = Float32Array.from({ length: N }, rand), rowScale = Float32Array.from({ length: M }, rand);
        const out = Float32Array.from({ length: M * N }, rand);
        const before = out.slice();
        const opts = mode === MATMUL_MODE.siluGate ? { mode, w2, bias2: bias } : mode === MATMUL_MODE.addScaled ? { mode, rowScale } : { mode };
        await withKernel(portable, () => bf16Matmul(a, w, bias, out, M, N, K, { ...opts, arithmetic: 'wide', f16: true }));
        let worst = 0;
        for (let m = 0; m < M; m++) {
          for (let n = 0; n < N; n++) {
            let y = bias[n]!, y2 = bias[n]!;
            for (let k = 0; k < K; k++) {
              y += a[m * K + k]! * wf[n * K + k]!;
              y2 += a[m * K + k]! * w2f[n * K + k]!;
            }
            const want = mode === MATMUL_MODE.store ? y : mode === MATMUL_MODE.addScaled ? before[m * N + n]! + rowScale[m]! * y : (y / (1 + Math.exp(-y))) * y2;
            worst = Math.max(worst, Math.abs(out[m * N + n]! - want) / (1 + Math.abs(want)));
          }
        }
        assert.ok(worst < 2e-5, `${name} ${M}x${N}x${K} mode ${mode}: ${worst}`);
      }
    }
  }
  await assert.rejects(async () => bf16Matmul(new Float32Array(2), new Uint16Array(2), null, new Float32Array(1), 1, 1, 2, { f16: true }), /float16 weights are for wide products only/);
});

test('wide matmul: the same bytes on 1, 2 or 3 threads, with each kernel, and from each kernel (one fused multiply-add chain per sum, in order of k), past one tile of 80 rows and within one of at most 32 rows (W widened in packs), and within one of more (W\'s bf16 rows read as stored, two values at a time: K odd, N off the 4-row tile)', async () => {
  for (const [M, N, K] of [[90, 137, 2100], [75, 138, 2101], [33, 139, 2101], [20, 137, 2100]] as const) {
    const a = Float32Array.from({ length: M * K }, rand), w = Uint16Array.from({ length: N * K }, () => bits(rand()));
    const rowScale = Float32Array.from({ length: M }, rand), start = Float32Array.from({ length: M * N }, rand);
    const byKernel: Float32Array[] = [];
    for (const { name, portable } of KERNELS) {
      const outs = [];
      for (const threads of [1, 2, 3, 2]) {
        const out = start.slice();
        await withKernel(portable, () => bf16Matmul(a, w, null, out, M, N, K, { threads, arithmetic: 'wide', mode: MATMUL_MODE.addScaled, rowScale }));
        outs.push(out);
      }
      for (const o of outs.slice(1)) assert.deepEqual(o, outs[0], name);
      byKernel.push(outs[0]!);
    }
    for (const o of byKernel.slice(1)) assert.deepEqual(o, byKernel[0], `${M}x${N}x${K}: the AVX-512 kernel's bits are the portable one's`);
    // And a row's sums do not depend on the other rows: a row alone (its own tile) as among the others.
    const r = Math.min(70, M - 1);
    const alone = start.slice(r * N, (r + 1) * N);
    await bf16Matmul(a.subarray(r * K, (r + 1) * K), w, null, alone, 1, N, K, { arithmetic: 'wide', mode: MATMUL_MODE.addScaled, rowScale: rowScale.subarray(r, r + 1) });
    assert.deepEqual(alone, byKernel[0]!.subarray(r * N, (r + 1) * N));
  }
});

test('native matmul over ranges of W\'s rows: each range into its columns of out, x converted once into the caller\'s tiles, gives the whole product\'s bits (every mode, wide and bf16)', async () => {
  const M = 9, N = 150, K = 2100, cuts = [0, 64, 70, 150];
  const x0 = Float32Array.from({ length: M * K }, rand);
  const w = Uint16Array.from({ length: N * K }, () => bits(rand())), w2 = Uint16Array.from({ length: N * K }, () => bits(rand()));
  const bias = Float32Array.from({ length: N }, rand), rowScale = Float32Array.from({ length: M }, rand);
  const start = Float32Array.from({ length: M * N }, rand);
  const arithmetics = [...KERNELS.map((k) => ({ ...k, arithmetic: 'wide' as const })), { name: 'bf16 portable', portable: true, arithmetic: 'bf16' as const }];
  for (const { name, portable, arithmetic } of arithmetics) {
    for (const mode of [MATMUL_MODE.store, MATMUL_MODE.addScaled, MATMUL_MODE.siluGate]) {
      const whole = start.slice(), pieces = start.slice(), a = x0.slice();
      const opts = (r0: number, r1: number) => ({ mode, arithmetic, rowScale: mode === MATMUL_MODE.addScaled ? rowScale : null, w2: mode === MATMUL_MODE.siluGate ? w2.subarray(r0 * K, r1 * K) : null, bias2: mode === MATMUL_MODE.siluGate ? bias.subarray(r0, r1) : null });
      await withKernel(portable, () => bf16Matmul(a, w, bias, whole, M, N, K, opts(0, N)));
      const xTiles = arithmetic === 'wide' ? new Float32Array(xTilesLength(M, K, 'wide')) : new Uint16Array(xTilesLength(M, K));
      for (let c = 0; c + 1 < cuts.length; c++) {
        const [r0, r1] = [cuts[c]!, cuts[c + 1]!];
        if (c > 0) a.fill(Number.NaN, 0, K); // x's tiles are taken as the first call left them: a changed x is not read again
        await withKernel(portable, () => bf16Matmul(a, w.subarray(r0 * K, r1 * K), bias.subarray(r0, r1), pieces, M, r1 - r0, K, { ...opts(r0, r1), outCols: N, outCol: r0, xTiles, xReady: c > 0 }));
      }
      assert.deepEqual(pieces, whole, `${name} mode ${mode}`);
    }
  }
  const x = new Float32Array(6), w1 = new Uint16Array(6), out = new Float32Array(8);
  await withKernel(true, async () => {
    assert.throws(() => bf16Matmul(x, w1, null, out, 2, 2, 3, { outCols: 4, outCol: 3 }), /^TypeError: matmul: out's columns \[outCol, outCol \+ N\) must lie in its outCols$/);
    assert.throws(() => bf16Matmul(x, w1, null, out, 2, 2, 3, { outCols: 3, outCol: 1 }), /^TypeError: matmul: out must hold M\*outCols values$/);
    assert.throws(() => bf16Matmul(x, w1, null, out, 2, 2, 3, { outCols: 4, arithmetic: 'wide', xTiles: new Float32Array(32) }), /^TypeError: matmul: xTiles must hold ceil\(M\/6\)\*6 rows \(wide: ceil\(M\/80\)\*80\) of K rounded up to 32$/);
    assert.throws(() => bf16Matmul(x, w1, null, out, 2, 2, 3, { outCols: 4, arithmetic: 'wide', xReady: true }), /^TypeError: matmul: xReady needs xTiles$/);
    assert.throws(() => bf16Matmul(x, w1, null, out, 2, 2, 3, { outCols: 4, arithmetic: 'wide', xTiles: new Uint16Array(192) }), /xTiles: Float32Array \(wide\) or Uint16Array/);
  });
});

test('native matmul: products queued without waiting (the threads going from one to the next on their own, the pool growing mid-queue, x taken from tiles an earlier queued product filled) give the bits of products run one at a time', async () => {
  const M = 13, N = 200, K = 300, cuts = [0, 64, 128, 192, 200];
  const a = Float32Array.from({ length: M * K }, rand), w = Uint16Array.from({ length: N * K }, () => bits(rand()));
  for (const { name, portable } of KERNELS) {
    const one = new Float32Array(M * N), queued = new Float32Array(M * N);
    for (let c = 0; c + 1 < cuts.length; c++) {
      const [r0, r1] = [cuts[c]!, cuts[c + 1]!];
      await withKernel(portable, () => bf16Matmul(a, w.subarray(r0 * K, r1 * K), null, one, M, r1 - r0, K, { arithmetic: 'wide', outCols: N, outCol: r0 }));
    }
    const xTiles = new Float32Array(xTilesLength(M, K, 'wide'));
    const threads = [1, 2, 4, 3]; // the pool grows to 4 while products are queued
    await withKernel(portable, () => Promise.all(cuts.slice(0, -1).map((r0, c) => bf16Matmul(a, w.subarray(r0 * K, cuts[c + 1]! * K), null, queued, M, cuts[c + 1]! - r0, K, { arithmetic: 'wide', outCols: N, outCol: r0, threads: threads[c], xTiles, xReady: c > 0 }))));
    assert.deepEqual(queued, one, name);
  }
});

test('wide unavailable: the reason names what is missing (no module built, no AVX-512); the portable kernel runs anywhere', () => {
  assert.match(whyWideUnavailable(null, false) ?? '', /^the native kernels were not built \(build\/bf16-matmul\.node is missing\)$/);
  assert.equal(whyWideUnavailable({ supportedWide: () => false }, false), 'this CPU has no AVX-512 (AVX512F and AVX512BW)');
  assert.equal(whyWideUnavailable({ supportedWide: () => false }, true), null);
});

test('fp32 on a bf16-stored model: the wide kernel runs it, within float32 rounding of onnxruntime\'s pass (states, router inputs, normalised gate rows)', async () => {
  const model = await bf16Model();
  const before = passStats.onnxruntime;
  const exact = await withOnnxruntime(() => computeAllHiddenStates(model, PROMPTS));
  const gatesExact = await withOnnxruntime(() => computePromptStates(model, PROMPTS));
  const routerExact = await withOnnxruntime(() => computeRouterInputs(model, PROMPTS));
  assert.equal(passStats.onnxruntime, before + 3, 'MOE_FORGE_FP32_KERNEL=onnxruntime takes onnxruntime\'s Gemm');
  for (const { name, portable } of KERNELS) {
    const wide = passStats.wide;
    const states = await withKernel(portable, () => computeAllHiddenStates(model, PROMPTS));
    const gates = await withKernel(portable, () => computePromptStates(model, PROMPTS));
    const router = await withKernel(portable, () => computeRouterInputs(model, PROMPTS));
    assert.equal(passStats.wide, wide + 3, `${name}: the wide kernel ran each pass`);
    for (let p = 0; p < PROMPTS.length; p++) {
      for (let e = 0; e < exact[p]!.length; e++) {
        const scale = exact[p]![e]!.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        assert.ok(maxAbsDiff(exact[p]![e]!, states[p]![e]!) <= 1e-5 * scale, `${name} prompt ${p} entry ${e}`);
      }
      for (let l = 0; l < gates[p]!.length; l++) {
        for (const pick of ['last', 'sum'] as const) {
          const d = maxAbsDiff(normalize(Float64Array.from(gatesExact[p]![l]![pick])), normalize(Float64Array.from(gates[p]![l]![pick])));
          assert.ok(d <= 1e-5, `${name} prompt ${p} layer ${l} ${pick}: ${d}`);
        }
      }
      for (let l = 0; l < router[p]!.length; l++) {
        const scale = routerExact[p]![l]!.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        assert.ok(maxAbsDiff(routerExact[p]![l]!, router[p]![l]!) <= 1e-5 * scale, `${name} router input prompt ${p} layer ${l}`);
      }
    }
  }
});

test('wide with another model\'s MLPs behind the base\'s attention (gate_mode fit): the router inputs of onnxruntime\'s pass, within float32 rounding', async () => {
  const [base, expert] = [await bf16Model(1), await bf16Model(2)];
  const exact = await withOnnxruntime(() => computeRouterInputs(base, PROMPTS, { mlpFrom: expert }));
  const plain = await withOnnxruntime(() => computeRouterInputs(base, PROMPTS));
  for (const { name, portable } of KERNELS) {
    const wide = passStats.wide;
    const got = await withKernel(portable, () => computeRouterInputs(base, PROMPTS, { mlpFrom: expert }));
    assert.equal(passStats.wide, wide + 1, `${name}: the wide kernel ran`);
    for (let p = 0; p < PROMPTS.length; p++) {
      for (let l = 0; l < got[p]!.length; l++) {
        const scale = exact[p]![l]!.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        assert.ok(maxAbsDiff(exact[p]![l]!, got[p]![l]!) <= 1e-5 * scale, `${name} prompt ${p} layer ${l}`);
      }
      // Past layer 0 the expert's MLPs changed the states: the hybrid is not the base alone.
      assert.ok(maxAbsDiff(plain[p]![1]!, got[p]![1]!) > 1e-3, `${name} prompt ${p}: the expert's MLPs were used`);
    }
  }
});

test('fp32 on a float32-stored model stays onnxruntime\'s (widening nothing, the kernel would gain nothing and round the weights)', async () => {
  await withKernel(true, async () => {
    const { onnxruntime, wide } = passStats;
    await computePromptStates(TINY('a'), PROMPTS);
    assert.deepEqual([passStats.onnxruntime - onnxruntime, passStats.wide - wide], [1, 0]);
  });
});

test('wide: a prompt gives the same bits alone as packed with others', async () => {
  const model = await bf16Model();
  for (const { name, portable } of KERNELS) {
    const packed = await withKernel(portable, () => computeAllHiddenStates(model, PROMPTS));
    for (const i of [0, 3]) {
      const alone = await withKernel(portable, () => computeAllHiddenStates(model, [PROMPTS[i]!]));
      for (let e = 0; e < alone[0]!.length; e++) assert.deepEqual(alone[0]![e], packed[i]![e], `${name} prompt ${i} entry ${e}`);
    }
  }
});

test('native passes with their weights streamed in pieces of 64 rows (several packs, several pieces per projection) give the bits of whole-projection pieces', async () => {
  const dir = join(tempDir(), 'pieces');
  // q, o and down 128 rows (2 pieces), gate and up 200 (4 pieces; the last of 8 rows).
  await writeTinyModel(dir, { modelType: 'llama', hidden: 128, layers: 2, heads: 4, kvHeads: 2, intermediate: 200, vocab: 512, dtype: 'BF16', seed: 3 });
  const runs = [...KERNELS.map((k) => ({ ...k, precision: 'fp32' as const })), { name: 'bf16 portable', portable: true, precision: 'bf16' as const }];
  for (const { name, portable, precision } of runs) {
    const pass = () => withKernel(portable, () => computeAllHiddenStates(dir, PROMPTS, { precision, packTokens: 8 }));
    const whole = await pass();
    process.env[PIECE_BYTES_ENV] = '1';
    try {
      const { wide, bf16 } = passStats;
      const pieces = await pass();
      assert.equal(passStats.wide + passStats.bf16, wide + bf16 + 1, `${name}: a native pass ran`);
      assert.deepEqual(pieces, whole, name);
    } finally {
      delete process.env[PIECE_BYTES_ENV];
    }
  }
});

test('wide: a pass prepared ahead reads its first layer\'s bf16 projections, is taken, and gives the states of one that is not', async () => {
  const model = join(FIXTURES, 'families', 'llama3-rope', 'model'); // stored bf16, written long ago (a just-written folder is not vouched for)
  await withKernel(!CPU_HAS_WIDE, async () => {
    const plain = await computePromptStates(model, PROMPTS.slice(0, 3));
    const { taken, bf16Reads, passedOver } = aheadStats;
    await prepareForward(model, {});
    assert.equal(aheadStats.bf16Reads, bf16Reads + 1, 'the first layer\'s reads began with the setup');
    const ahead = await computePromptStates(model, PROMPTS.slice(0, 3));
    assert.equal(aheadStats.passedOver, passedOver);
    assert.equal(aheadStats.taken, taken + 1, 'the prepared pass was taken');
    assert.deepEqual(ahead, plain);
  });
});

for (const family of ['llama3-rope', 'llama-fp16']) test(`wide, ${family} (stored ${family === 'llama-fp16' ? 'float16' : 'bf16'}): every layer's states match transformers' within 1e-4, as onnxruntime's do`, async () => {
  const dir = join(FIXTURES, 'families', family);
  const model = join(dir, 'model');
  const ref = await openReference(join(dir, 'reference.safetensors'));
  const ids = (JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8')) as { token_ids: number[][] }).token_ids.slice(0, 3);
  for (const { name, portable } of KERNELS) {
    const wide = passStats.wide;
    const states = await withKernel(portable, () => computeAllHiddenStates(model, ids));
    assert.equal(passStats.wide, wide + 1, `${name}: the wide kernel ran`);
    for (let i = 0; i < ids.length; i++) {
      const want = await ref.f32(`p${i}.hidden_states`);
      const [E, T] = ref.shape(`p${i}.hidden_states`) as [number, number, number];
      for (let e = 0; e < E; e++) {
        const d = maxAbsDiff(states[i]![e]!, want.subarray(e * T * 64, (e + 1) * T * 64));
        assert.ok(d < 1e-4, `${name} prompt ${i} entry ${e}: ${d}`);
      }
    }
  }
});

test('wide: the prompt-state pass, whose layer inputs and outputs go into arrays kept for the pass (it copies what it keeps), gives the bits of a pass handing out fresh arrays, in one pack and in several', async () => {
  const model = await bf16Model(5);
  for (const packTokens of [2048, 6]) {
    const states = await computePromptStates(model, PROMPTS, { packTokens });
    const all = await computeAllHiddenStates(model, PROMPTS, { packTokens });
    for (const [i, p] of PROMPTS.entries()) {
      const T = p.length, H = all[i]![0]!.length / T;
      for (let e = 0; e < states[i]!.length; e++) {
        const h = all[i]![e]!;
        assert.deepEqual(states[i]![e]!.last, h.slice((T - 1) * H), `packTokens ${packTokens} prompt ${i} entry ${e}: last`);
        const sum = new Float64Array(H);
        for (let t = 0; t < T; t++) for (let j = 0; j < H; j++) sum[j]! += h[t * H + j]!;
        assert.deepEqual(states[i]![e]!.sum, Float32Array.from(sum), `packTokens ${packTokens} prompt ${i} entry ${e}: sum`);
      }
    }
  }
});
