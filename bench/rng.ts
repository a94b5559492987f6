/**
 * Normal draws per second: PyTorch's generator as `--rng torch` reproduces it (WebAssembly kernel, and its
 * JavaScript path), against the default per-tensor stream generator, all in this process.
 */
import { Rng } from '../libs/gates/rng';
import { TorchGenerator } from '../libs/gates/torch-rng';
import { useWasmNormals, wasmNormals } from '../libs/gates/torch-normal-wasm';

export interface RngFigures {
  /** Millions of normals per wall-clock second, and per CPU second of this process. */
  torchWasm: { wall: number; cpu: number; n: number };
  torchWasmBf16: { wall: number; cpu: number; n: number };
  torchJs: { wall: number; cpu: number; n: number };
  stream: { wall: number; cpu: number; n: number };
  wasm: boolean;
}

const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

function measure(n: number, draw: (out: Float32Array) => void): { wall: number; cpu: number; n: number } {
  const chunk = new Float32Array(Math.min(n, 1 << 22));
  const w0 = performance.now();
  const c0 = cpuSeconds();
  for (let done = 0; done < n; done += chunk.length) draw(chunk);
  const wall = (performance.now() - w0) / 1000;
  const cpu = cpuSeconds() - c0;
  return { wall: n / wall / 1e6, cpu: n / cpu / 1e6, n };
}

function torch(n: number, dtype: 'F32' | 'BF16') {
  // One tensor of n values, read in chunks as the writer does.
  const s = new TorchGenerator(42).randnStream(n, dtype);
  return measure(n, (out) => s.read(out));
}

export function benchRng(): RngFigures {
  const wasm = wasmNormals() !== null;
  torch(1 << 22, 'F32'); // warm-up (compiles the kernel)
  const torchWasm = torch(1 << 25, 'F32');
  const torchWasmBf16 = torch(1 << 24, 'BF16');
  useWasmNormals(false);
  let torchJs;
  try {
    torch(1 << 18, 'F32');
    torchJs = torch(1 << 22, 'F32');
  } finally {
    useWasmNormals(true);
  }
  const rng = new Rng(42, 'bench');
  const stream = measure(1 << 23, (out) => {
    for (let i = 0; i < out.length; i++) out[i] = rng.normal();
  });
  return { torchWasm, torchWasmBf16, torchJs, stream, wasm };
}
