/**
 * Normal draws per second: PyTorch's generator as `--rng torch` reproduces it (WebAssembly kernel, and its
 * JavaScript path), against the default per-tensor noise streams, all in this process; and expert noise
 * applied to a bfloat16 tensor (source bytes to output bytes) with either generator, against a plain copy of
 * the same bytes.
 */
import { Rng } from '../libs/gates';
import { TorchGenerator } from '../libs/gates';
import { useFusedNormals, useWasmNormals, wasmNormals } from '../libs/gates';
import { noiseApplier, streamNormals, TorchDrawSeeker } from '../libs/noise';
import type { SourcePart } from '../libs/plan';

export interface Rate {
  /** Millions of values per wall-clock second, and per CPU second of this process. */
  wall: number;
  cpu: number;
  n: number;
}

export interface RngFigures {
  torchWasm: Rate;
  torchWasmBf16: Rate;
  torchJs: Rate;
  /** The default noise streams (per-tensor mt19937 through the same float32 kernel). */
  stream: Rate;
  /** The `random` / `uniform_random` routers' generator (xoshiro128**, double Box-Muller in JavaScript). */
  gateRng: Rate;
  /** Noise applied to a bfloat16 tensor, bytes to bytes, per generator; the baseline copies the same chunks. */
  noiseStreamBf16: Rate;
  noiseTorchBf16: Rate;
  copyBf16: Rate;
  wasm: boolean;
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

function measure(n: number, draw: (out: Float32Array) => void): Rate {
  const chunk = new Float32Array(Math.min(n, 1 << 22));
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

function oneRound(): RngFigures {
  const wasm = wasmNormals() !== null;
  torch(1 << 22, 'F32'); // warm-up (compiles the kernel)
  const torchWasm = torch(1 << 25, 'F32');
  torch(1 << 20, 'BF16');
  const torchWasmBf16 = torch(1 << 24, 'BF16');
  useWasmNormals(false);
  let torchJs;
  try {
    torch(1 << 18, 'F32');
    torchJs = torch(1 << 22, 'F32');
  } finally {
    useWasmNormals(true);
  }
  const sn = 1 << 25;
  const s = streamNormals(42, 'bench', sn);
  const stream = measure(sn, (out) => s.read(out));
  const fused = wasmNormals()?.fused === true;
  // The same kernel with each fused multiply-add emulated in float64 (as where the engine has no fused one).
  useFusedNormals(false);
  let torchEmulated, streamEmulated;
  try {
    torch(1 << 22, 'F32');
    torchEmulated = torch(1 << 25, 'F32');
    const e = streamNormals(42, 'bench', sn);
    streamEmulated = measure(sn, (out) => e.read(out));
  } finally {
    useFusedNormals(true);
  }
  const rng = new Rng(42, 'bench');
  const gateRng = measure(1 << 22, (out) => {
    for (let i = 0; i < out.length; i++) out[i] = rng.normal();
  });
  const chunks = bf16Chunks(1 << 25);
  noise(chunks.slice(0, 2), false); // warm-up
  noise(chunks.slice(0, 2), true);
  const copyBf16 = timed(1 << 25, () => {
    for (const c of chunks) Buffer.from(c);
  });
  const noiseStreamBf16 = noise(chunks, false);
  const noiseTorchBf16 = noise(chunks, true);
  return { torchWasm, torchWasmBf16, torchJs, stream, gateRng, noiseStreamBf16, noiseTorchBf16, copyBf16, wasm, fused, torchEmulated, streamEmulated };
}

/**
 * Best of three rounds per figure (baselines too): this VM's speed swings by ±15% from one second to the next
 * (the same kernel measured 89 and 121 M/s a minute apart), so one round says more about the neighbours.
 */
export function benchRng(rounds = 3): RngFigures {
  const all = Array.from({ length: rounds }, oneRound);
  const best = { ...all[0]! };
  for (const r of all.slice(1)) {
    for (const k of Object.keys(best) as (keyof RngFigures)[]) {
      const a = best[k], b = r[k];
      if (typeof a === 'object' && typeof b === 'object' && b.wall > a.wall) (best as Record<string, unknown>)[k] = b;
    }
  }
  return best;
}
