/**
 * Normal draws per second: PyTorch's generator as `--rng torch` reproduces it (the native kernels where built and
 * the CPU has AVX-512, the WebAssembly kernel, its JavaScript path), against the default per-tensor noise streams,
 * all in this process; and expert noise applied to a bfloat16 tensor (source bytes to output bytes) with either
 * generator, against a plain copy of the same bytes, and with the native kernels against the WebAssembly ones.
 */
import { Rng } from '../libs/gates';
import { TorchGenerator } from '../libs/gates';
import { NATIVE_KERNELS, normalsNative, setNoiseKernel, useFusedNormals, useWasmNormals, wasmNormals } from '../libs/gates';
import { noiseApplier, setNormalsAheadThreads, streamNormals, TorchDrawSeeker } from '../libs/noise';
import type { SourcePart } from '../libs/plan';

export interface Rate {
  /** Millions of values per wall-clock second, and per CPU second of this process. */
  wall: number;
  cpu: number;
  n: number;
}

export interface RngFigures {
  /** --rng torch with the kernels that run by default (native where `native`), float32 and bfloat16. */
  torch: Rate;
  torchBf16: Rate;
  /** The same with the WebAssembly kernel, and its JavaScript path. */
  torchWasm: Rate;
  torchJs: Rate;
  /** The default noise streams (per-tensor mt19937 through the same float32 kernel), by default and in WebAssembly. */
  stream: Rate;
  streamWasm: Rate;
  /** The same with the native AVX2 code, where the CPU has AVX2 and FMA and the best code is AVX-512's (else null). */
  streamAvx2: Rate | null;
  /** The `random` / `uniform_random` routers' generator (xoshiro128**, double Box-Muller in JavaScript). */
  gateRng: Rate;
  /** Noise applied to a bfloat16 tensor, bytes to bytes, per generator; the baseline copies the same chunks. */
  noiseStreamBf16: Rate;
  noiseTorchBf16: Rate;
  /** Default-rng noise with the WebAssembly kernels (generator threads and noise kernel). */
  noiseStreamBf16Wasm: Rate;
  copyBf16: Rate;
  wasm: boolean;
  /** Whether the native kernels (build/normals.node) run by default here, and which code: AVX-512 or AVX2. */
  native: boolean;
  nativeKernel: 'AVX-512' | 'AVX2' | null;
  /** Whether the kernel multiply-adds with the engine's fused instruction; the same figures with the emulating kernel. */
  fused: boolean;
  torchEmulated: Rate;
  streamEmulated: Rate;
}

const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

function timed(n: number, run: () => void): Rate {
  const w0 = performance.now();
  const c0 = cpuSeconds();
  run();
  const wall = (performance.now() - w0) / 1000;
  const cpu = cpuSeconds() - c0;
  return { wall: n / wall / 1e6, cpu: n / cpu / 1e6, n };
}

/**
 * The chunk every measurement reads into, its pages touched once: a fresh 16 MiB array per measurement cost its
 * page faults (~70 ms on the VMs measured) to whichever figure got one, a third of that figure's rate.
 */
const CHUNK = new Float32Array(1 << 22).fill(0);

function measure(n: number, draw: (out: Float32Array) => void): Rate {
  const chunk = CHUNK.subarray(0, Math.min(n, CHUNK.length));
  return timed(n, () => {
    for (let done = 0; done < n; done += chunk.length) draw(chunk);
  });
}

function torch(n: number, dtype: 'F32' | 'BF16') {
  // One tensor of n values, read in chunks as the writer does.
  const s = new TorchGenerator(42).randnStream(n, dtype);
  return measure(n, (out) => s.read(out));
}

/** bfloat16 weights of n values, in the writer's 16 MiB chunks. */
function bf16Chunks(n: number): Buffer[] {
  const all = Buffer.allocUnsafe(n * 2);
  for (let i = 0; i < n; i++) all.writeUInt16LE(0x3c00 + ((i * 37) & 0x3ff), i * 2);
  const out: Buffer[] = [];
  for (let at = 0; at < all.length; at += 16 << 20) out.push(all.subarray(at, at + (16 << 20)));
  return out;
}

function noise(chunks: Buffer[], torchRng: boolean): Rate {
  const n = chunks.reduce((a, c) => a + c.length / 2, 0);
  const part: SourcePart = {
    kind: 'source', model: 'm', tensor: 't', file: 'f', offset: 0, byteLength: n * 2, dtype: 'BF16', shape: [n],
    noise: { scale: 0.01, seed: 42, stream: 'noise/expert/0/0/w1', ...(torchRng ? { torch: { offset: 0, cachedNormal: null } } : {}) },
  };
  const a = noiseApplier(part, () => new TorchDrawSeeker(42))!;
  try {
    return timed(n, () => {
      for (const c of chunks) a.applyBytes(c, true);
    });
  } finally {
    // Frees the generator threads: an applier left open made every later default-rng figure generate here.
    a.close();
  }
}

/** Runs fn with the WebAssembly noise kernels (the native ones off); the generator threads start again for it and after. */
async function withWasmKernels<T>(fn: () => T): Promise<T> {
  setNoiseKernel('wasm');
  // The generator threads read the choice when they start.
  const threads = await setNormalsAheadThreads(1);
  await setNormalsAheadThreads(threads);
  try {
    return fn();
  } finally {
    setNoiseKernel(undefined);
    await setNormalsAheadThreads(threads);
  }
}

async function oneRound(): Promise<RngFigures> {
  const wasm = wasmNormals() !== null;
  const native = normalsNative() !== null;
  const sn = 1 << 25;
  const streamRate = () => {
    const s = streamNormals(42, 'bench', sn);
    return measure(sn, (out) => s.read(out));
  };
  // The kernels that run by default.
  torch(1 << 22, 'F32'); // warm-up (compiles the kernel)
  const torchDefault = torch(1 << 25, 'F32');
  torch(1 << 20, 'BF16');
  const torchBf16 = torch(1 << 24, 'BF16');
  const stream = streamRate();
  const chunks = bf16Chunks(1 << 25);
  noise(chunks.slice(0, 2), false); // warm-up
  noise(chunks.slice(0, 2), true);
  const copyBf16 = timed(1 << 25, () => {
    for (const c of chunks) Buffer.from(c);
  });
  const noiseStreamBf16 = noise(chunks, false);
  const noiseTorchBf16 = noise(chunks, true);
  // The native AVX2 code, where the best is AVX-512's.
  let streamAvx2: Rate | null = null;
  if (native && normalsNative()!.kernel === NATIVE_KERNELS.avx512) {
    setNoiseKernel('avx2');
    try {
      if (normalsNative()) streamAvx2 = streamRate();
    } finally {
      setNoiseKernel(undefined);
    }
  }
  // The WebAssembly kernels, their multiply-adds fused and emulated, and the JavaScript path.
  const w = await withWasmKernels(() => {
    torch(1 << 22, 'F32');
    const torchWasm = torch(1 << 25, 'F32');
    const streamWasm = streamRate();
    noise(chunks.slice(0, 2), false);
    const noiseStreamBf16Wasm = noise(chunks, false);
    useWasmNormals(false);
    let torchJs;
    try {
      torch(1 << 18, 'F32');
      torchJs = torch(1 << 22, 'F32');
    } finally {
      useWasmNormals(true);
    }
    // The same kernel with each fused multiply-add emulated in float64 (as where the engine has no fused one).
    useFusedNormals(false);
    try {
      torch(1 << 22, 'F32');
      return { torchWasm, streamWasm, noiseStreamBf16Wasm, torchJs, torchEmulated: torch(1 << 25, 'F32'), streamEmulated: streamRate() };
    } finally {
      useFusedNormals(true);
    }
  });
  const fused = wasmNormals()?.fused === true;
  const rng = new Rng(42, 'bench');
  const gateRng = measure(1 << 22, (out) => {
    for (let i = 0; i < out.length; i++) out[i] = rng.normal();
  });
  const nativeKernel = native ? (normalsNative()!.kernel === NATIVE_KERNELS.avx512 ? 'AVX-512' as const : 'AVX2' as const) : null;
  return { nativeKernel, torch: torchDefault, torchBf16, stream, streamAvx2, gateRng, noiseStreamBf16, noiseTorchBf16, copyBf16, wasm, native, fused, ...w };
}

/**
 * Best of three rounds per figure (baselines too): this VM's speed swings by ±15% from one second to the next
 * (the same kernel measured 89 and 121 M/s a minute apart), so one round says more about the neighbours.
 */
export async function benchRng(rounds = 3): Promise<RngFigures> {
  const all: RngFigures[] = [];
  for (let r = 0; r < rounds; r++) all.push(await oneRound());
  const best = { ...all[0]! };
  for (const r of all.slice(1)) {
    for (const k of Object.keys(best) as (keyof RngFigures)[]) {
      const a = best[k], b = r[k];
      if (a && b && typeof a === 'object' && typeof b === 'object' && b.wall > a.wall) (best as Record<string, unknown>)[k] = b;
    }
  }
  return best;
}
