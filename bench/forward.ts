/**
 * Forward-pass benchmark: prompt states of a generated bf16 model (hidden 1024, 8 layers) against a plain
 * onnxruntime Gemm graph of the same projection shapes, run in the same process, so the figure is a
 * fraction of what this machine's ORT reaches on the matmuls alone.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { computePromptStates, encodeModel, type ForwardPrecision, type LayerState } from '../libs/forward';
import { normalize } from '../libs/gates';
import { OnnxDtype, type OnnxNode, type OnnxTensor } from '../libs/forward';
import { bf16Unavailable, sessionFromBytes } from '../libs/forward';
import { FP32_KERNEL_ENV, passStats } from '../libs/forward';
import { writeTinyModel, type TinyModelSpec } from './models';

const SPEC: TinyModelSpec = { modelType: 'llama', hidden: 1024, layers: 8, heads: 16, kvHeads: 4, intermediate: 2816, vocab: 2000, dtype: 'BF16', seed: 7 };
const PROMPTS = 24;
const TOKENS = 64;
const THREADS = 2;

function projShapes(s: TinyModelSpec): [string, number, number][] {
  const D = s.hidden / s.heads;
  return [
    ['q', s.heads * D, s.hidden], ['k', s.kvHeads * D, s.hidden], ['v', s.kvHeads * D, s.hidden], ['o', s.hidden, s.heads * D],
    ['gate', s.intermediate, s.hidden], ['up', s.intermediate, s.hidden], ['down', s.hidden, s.intermediate],
  ];
}

/** Multiply-add FLOPs of one layer for one prompt of T tokens: projections plus QK^T and PV. */
function layerFlops(s: TinyModelSpec, T: number): { gemm: number; attention: number } {
  const gemm = projShapes(s).reduce((a, [, o, i]) => a + 2 * o * i * T, 0);
  const D = s.hidden / s.heads;
  return { gemm, attention: 2 * 2 * s.heads * D * T * T };
}

/** CPU seconds of this process (every thread: onnxruntime's, libuv's) since `c0`. */
const cpuSince = (c0: NodeJS.CpuUsage) => {
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1e6;
};

/** The same projections as independent Gemms on float32 weights: the ceiling for the layer's matmuls. */
async function gemmBaseline(s: TinyModelSpec, T: number, runs: number): Promise<{ seconds: number; cpuSeconds: number; flops: number }> {
  const nodes: OnnxNode[] = [];
  const inits: OnnxTensor[] = [];
  const outputs: { name: string; dtype: number; shape: (number | string)[] }[] = [];
  for (const [name, o, i] of projShapes(s)) {
    const w = new Float32Array(o * i);
    for (let j = 0; j < w.length; j++) w[j] = ((j * 2654435761) % 1000) / 1000 - 0.5;
    inits.push({ name: `w_${name}`, dtype: OnnxDtype.FLOAT, dims: [o, i], data: { raw: new Uint8Array(w.buffer) } });
    const input = i === s.hidden ? 'x' : 'a';
    nodes.push({ op: 'Gemm', inputs: [input, `w_${name}`], outputs: [`y_${name}`], attrs: { transB: 1 } });
    outputs.push({ name: `y_${name}`, dtype: OnnxDtype.FLOAT, shape: ['T', o] });
  }
  const bytes = encodeModel({
    opset: 17,
    graph: {
      name: 'gemm_baseline', nodes, initializers: inits, outputs,
      inputs: [
        { name: 'x', dtype: OnnxDtype.FLOAT, shape: ['T', s.hidden] },
        { name: 'a', dtype: OnnxDtype.FLOAT, shape: ['T', s.intermediate] },
      ],
    },
  });
  const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: THREADS, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  const feeds = {
    x: new ort.Tensor('float32', new Float32Array(T * s.hidden).fill(0.01), [T, s.hidden]),
    a: new ort.Tensor('float32', new Float32Array(T * s.intermediate).fill(0.01), [T, s.intermediate]),
  };
  await session.run(feeds); // warm-up (prepacks the weights)
  // Best of two rounds, as the forward pass: the ceiling should not be lowered by a noisy neighbour.
  let seconds = Infinity, cpuSeconds = Infinity;
  for (let round = 0; round < 2; round++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (let r = 0; r < runs; r++) await session.run(feeds);
    seconds = Math.min(seconds, (performance.now() - t0) / 1000);
    cpuSeconds = Math.min(cpuSeconds, cpuSince(c0));
  }
  await session.release();
  return { seconds, cpuSeconds, flops: layerFlops(s, T).gemm * runs };
}

export interface ForwardBenchOptions {
  spec?: TinyModelSpec;
  prompts?: number;
  tokens?: number;
  /** An existing model folder of `spec`'s shape (else one is generated). */
  modelDir?: string;
  /** The generated model's dtype when `spec` is not given (BF16; F16: the wide kernel's float16 route). */
  dtype?: 'BF16' | 'F16';
  /** Only the fp32 pass (and onnxruntime's beside it where the wide kernel ran): no int8, bf16 or fixed cost. */
  fp32Only?: boolean;
}

/**
 * The forward pass on `prompts` × `tokens` against plain ORT Gemms of the same projection shapes (all tokens
 * in one call, as the packed forward runs them), and its fixed cost per layer: a 1-token prompt's time per layer,
 * which is nearly all weight reading, casting and session work.
 */
export async function benchForward(o: ForwardBenchOptions = {}): Promise<Record<string, unknown>> {
  const spec = o.spec ?? { ...SPEC, dtype: o.dtype ?? SPEC.dtype }, nPrompts = o.prompts ?? PROMPTS, tokens = o.tokens ?? TOKENS;
  const dir = o.modelDir ?? (await mkdtemp(join(tmpdir(), 'bench-forward-')));
  try {
    const tg = performance.now();
    if (!o.modelDir) await writeTinyModel(dir, spec);
    const generateSeconds = (performance.now() - tg) / 1000;
    let seed = 12345;
    const prompts = Array.from({ length: nPrompts }, () =>
      Array.from({ length: tokens }, () => (seed = (seed * 1103515245 + 12345) % 2147483648) % spec.vocab));
    const layersRun = spec.layers - 1; // the last layer's output is not a layer input

    const rssBefore = process.memoryUsage().rss;
    // Best of two runs each, fp32 and int8 alternated, as the baseline's: other processes on the machine add noise.
    // A layer's time: from the end of the layer before (its last pack's progress) to the end of its own, so it
    // holds everything the layer waits for (weights not yet widened included); the median over layers.
    const per = layerFlops(spec, tokens);
    const layerSeconds = (marks: number[]) => {
      const d = marks.slice(1).map((t, i) => (t - marks[i]!) / 1000).sort((a, b) => a - b);
      return d[Math.floor(d.length / 2)] ?? NaN;
    };
    // `viaOnnxruntime`: an fp32 pass through onnxruntime's Gemm (MOE_FORGE_FP32_KERNEL), the wide kernel's baseline.
    const run = async (precision: ForwardPrecision, viaOnnxruntime = false) => {
      if (viaOnnxruntime) process.env[FP32_KERNEL_ENV] = 'onnxruntime';
      const marks: number[] = [];
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      marks.push(t0);
      try {
        const states = await computePromptStates(dir, prompts, { threads: THREADS, precision, onProgress: (p) => p.promptsDone === p.prompts && marks.push(performance.now()) });
        return { seconds: (performance.now() - t0) / 1000, cpu: cpuSince(c0), layer: layerSeconds(marks), states };
      } finally {
        if (viaOnnxruntime) delete process.env[FP32_KERNEL_ENV];
      }
    };
    let seconds = Infinity, layerS = Infinity, int8Seconds = Infinity, int8LayerS = Infinity, cpu = Infinity, int8Cpu = Infinity;
    let bf16Seconds = Infinity, bf16LayerS = Infinity, bf16Cpu = Infinity;
    let ortSeconds = Infinity, ortLayerS = Infinity;
    let exact: LayerState[][] = [], approx: LayerState[][] = [], bf16States: LayerState[][] = [], ortStates: LayerState[][] = [];
    const bf16 = !o.fp32Only && bf16Unavailable() === null;
    // Where the wide kernel ran the fp32 pass (the pass says: passStats), onnxruntime's Gemm for it beside it.
    let wide = false;
    for (let round = 0; round < 2; round++) {
      const widePasses = passStats.wide;
      const a = await run('fp32');
      wide = passStats.wide > widePasses;
      seconds = Math.min(seconds, a.seconds);
      cpu = Math.min(cpu, a.cpu);
      layerS = Math.min(layerS, a.layer);
      exact = a.states;
      if (wide) {
        const o = await run('fp32', true);
        ortSeconds = Math.min(ortSeconds, o.seconds);
        ortLayerS = Math.min(ortLayerS, o.layer);
        ortStates = o.states;
      }
      if (!o.fp32Only) {
        const b = await run('int8');
        int8Seconds = Math.min(int8Seconds, b.seconds);
        int8Cpu = Math.min(int8Cpu, b.cpu);
        int8LayerS = Math.min(int8LayerS, b.layer);
        approx = b.states;
      }
      if (bf16) {
        const c = await run('bf16');
        bf16Seconds = Math.min(bf16Seconds, c.seconds);
        bf16Cpu = Math.min(bf16Cpu, c.cpu);
        bf16LayerS = Math.min(bf16LayerS, c.layer);
        bf16States = c.states;
      }
    }
    const gateError = o.fp32Only ? NaN : normalisedRowError(exact, approx);
    let fixedSeconds = Infinity;
    for (let round = 0; round < (o.fp32Only ? 0 : 2); round++) {
      const t0 = performance.now();
      await computePromptStates(dir, [[1]], { threads: THREADS });
      fixedSeconds = Math.min(fixedSeconds, (performance.now() - t0) / 1000);
    }
    const peakRss = process.resourceUsage().maxRSS * 1024;

    const totalFlops = (per.gemm + per.attention) * nPrompts * layersRun;
    // As many Gemm runs as the forward runs layers: both sides last about as long, so a noisy neighbour
    // weighs on them alike (a short baseline's best-of-3 would pick a quiet moment the forward cannot).
    const baseline = await gemmBaseline(spec, tokens * nPrompts, layersRun);
    const baselineRate = baseline.flops / baseline.seconds;

    const layerFlopsAll = (per.gemm + per.attention) * nPrompts;
    const layerParams = projShapes(spec).reduce((a, [, o2, i]) => a + o2 * i, 0) + 2 * spec.hidden;
    return {
      model: `${spec.modelType} hidden ${spec.hidden}, ${spec.layers} layers, ${spec.heads}/${spec.kvHeads} heads, intermediate ${spec.intermediate}, ${spec.dtype ?? 'F32'}`,
      prompts: `${nPrompts} × ${tokens} tokens`,
      threads: THREADS,
      generateSeconds: +generateSeconds.toFixed(2),
      seconds: +seconds.toFixed(3),
      tokensPerSecond: Math.round((nPrompts * tokens) / seconds),
      gflopsOverall: +(totalFlops / seconds / 1e9).toFixed(2),
      gflopsGemmBaseline: +(baselineRate / 1e9).toFixed(2),
      gemmBaselineSeconds: +((totalFlops / baselineRate)).toFixed(3),
      fractionOfGemmOverall: +(totalFlops / seconds / baselineRate).toFixed(3),
      // Per CPU-second of the whole call (times the threads): what the wall figures would be on an idle machine
      // with as many cores as threads; on a loaded one, the wall figures mostly measure the neighbours.
      cpuSeconds: +cpu.toFixed(3),
      gflopsPerCpuOverall: +((totalFlops / cpu) * THREADS / 1e9).toFixed(2),
      gflopsPerCpuGemmBaseline: +((baseline.flops / baseline.cpuSeconds) * THREADS / 1e9).toFixed(2),
      fractionOfGemmCpu: +((totalFlops / cpu) / (baseline.flops / baseline.cpuSeconds)).toFixed(3),
      gflopsPerLayer: +(layerFlopsAll / layerS / 1e9).toFixed(2),
      fractionOfGemmPerLayer: +(layerFlopsAll / layerS / baselineRate).toFixed(3),
      ...(o.fp32Only
        ? {}
        : {
            int8CpuSeconds: +int8Cpu.toFixed(3),
            int8SpeedupCpu: +(cpu / int8Cpu).toFixed(3),
            int8Seconds: +int8Seconds.toFixed(3),
            int8GflopsPerLayer: +(layerFlopsAll / int8LayerS / 1e9).toFixed(2),
            int8SpeedupPerLayer: +(layerS / int8LayerS).toFixed(3),
            int8SpeedupOverall: +(seconds / int8Seconds).toFixed(3),
            int8GateMaxAbsError: +gateError.toExponential(2),
          }),
      // fp32 through onnxruntime's Gemm (where the wide kernel ran the fp32 rows above).
      ...(wide
        ? {
            fp32Kernel: 'wide',
            onnxruntimeFp32Seconds: +ortSeconds.toFixed(3),
            onnxruntimeFp32GflopsPerLayer: +(layerFlopsAll / ortLayerS / 1e9).toFixed(2),
            wideSpeedupPerLayer: +(ortLayerS / layerS).toFixed(3),
            wideGateMaxAbsDiff: +normalisedRowError(ortStates, exact).toExponential(2),
          }
        : { fp32Kernel: 'onnxruntime' }),
      // bf16 (where this CPU has AVX512-BF16): the projections in the native kernels, the rest in onnxruntime.
      ...(bf16
        ? {
            bf16Seconds: +bf16Seconds.toFixed(3),
            bf16CpuSeconds: +bf16Cpu.toFixed(3),
            bf16GflopsPerLayer: +(layerFlopsAll / bf16LayerS / 1e9).toFixed(2),
            bf16SpeedupPerLayer: +(layerS / bf16LayerS).toFixed(3),
            bf16SpeedupOverall: +(seconds / bf16Seconds).toFixed(3),
            bf16GateMaxAbsError: +normalisedRowError(exact, bf16States).toExponential(2),
          }
        : { bf16: o.fp32Only ? 'not run (fp32Only)' : bf16Unavailable() }),
      ...(o.fp32Only ? {} : { fixedSecondsPerLayer: +(fixedSeconds / layersRun).toFixed(3) }),
      rssBeforeMiB: Math.round(rssBefore / 2 ** 20),
      peakRssMiB: Math.round(peakRss / 2 ** 20),
      layerWeightsF32MiB: Math.round((layerParams * 4) / 2 ** 20),
    };
  } finally {
    if (!o.modelDir) await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The largest difference between the normalised gate rows the two runs' states give (hidden mode: each prompt's
 * last-token state and its mean, per layer input), as gates from hidden states are made: normalize(state).
 */
function normalisedRowError(a: LayerState[][], b: LayerState[][]): number {
  let worst = 0;
  for (let p = 0; p < a.length; p++) {
    for (let l = 0; l < a[p]!.length; l++) {
      for (const pick of ['last', 'sum'] as const) {
        const x = normalize(Float64Array.from(a[p]![l]![pick])), y = normalize(Float64Array.from(b[p]![l]![pick]));
        for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i]! - y[i]!));
      }
    }
  }
  return worst;
}

/**
 * CPU ms of this process while it idles 3 × 100 ms after Gemm runs: a session as the library makes it (workers
 * told not to spin) against one with onnxruntime's default spinning; best of 3 rounds each. The runner test
 * checks the behaviour (worker asleep after a run); the figure lives here.
 */
export async function benchIdleCpu(): Promise<{ libraryMs: number; spinningMs: number; idleMs: number; rounds: number }> {
  const K = 512, N = 4096, ROUNDS = 3;
  const bytes = encodeModel({
    opset: 17,
    graph: {
      name: 'gemm', nodes: [{ op: 'Gemm', inputs: ['x', 'w'], outputs: ['y'], attrs: { transB: 1 } }], initializers: [],
      inputs: [{ name: 'x', dtype: OnnxDtype.FLOAT, shape: ['T', K] }, { name: 'w', dtype: OnnxDtype.FLOAT, shape: [N, K] }],
      outputs: [{ name: 'y', dtype: OnnxDtype.FLOAT, shape: ['T', N] }],
    },
  });
  const feeds = {
    x: new ort.Tensor('float32', new Float32Array(64 * K).fill(1), [64, K]),
    w: new ort.Tensor('float32', new Float32Array(N * K).fill(0.5), [N, K]),
  };
  const idleCpuMs = async (session: ort.InferenceSession) => {
    let ms = 0;
    try {
      for (let i = 0; i < 3; i++) {
        await session.run(feeds);
        const c0 = process.cpuUsage();
        await new Promise((r) => setTimeout(r, 100));
        const c = process.cpuUsage(c0);
        ms += (c.user + c.system) / 1000;
      }
    } finally {
      await session.release();
    }
    return ms;
  };
  const lib: number[] = [], spin: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    lib.push(await idleCpuMs(await sessionFromBytes(bytes, { device: 'cpu', threads: THREADS })));
    spin.push(await idleCpuMs(await ort.InferenceSession.create(bytes, { intraOpNumThreads: THREADS, interOpNumThreads: 1 })));
  }
  return { libraryMs: +Math.min(...lib).toFixed(1), spinningMs: +Math.min(...spin).toFixed(1), idleMs: 300, rounds: ROUNDS };
}

if (require.main === module) {
  benchForward().then(
    (r) => console.log(JSON.stringify(r, null, 2)),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
}
