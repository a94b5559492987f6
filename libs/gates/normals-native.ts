import { builtAddonPath } from '../util';

/**
 * The noise's native kernels (native/normals.c, built by scripts/build.mjs into build/normals.node): mt19937 words
 * and the Box-Muller blocks of torch-rng.ts, and the addition of noise to bfloat16 and float32 weights, the same bits
 * as the WebAssembly kernels, ~3.5x faster with AVX-512. Absent (no C compiler, or a CPU without AVX2 and FMA), the
 * WebAssembly kernels run as before.
 */
interface NormalsAddon {
  normals(state: Int32Array, pos: number, out: Float32Array, kernel: NativeKernel): number;
  twist(state: Int32Array, times: number, kernel: NativeKernel): void;
  apply(dtype: 0 | 1, src: Uint8Array, norm: Float32Array, dst: Uint8Array, scale: number, kernel: NativeKernel): void;
  /** The best code the CPU runs. */
  supported(): NativeKernel;
}

/** The addon's code paths: plain C (fmaf, contraction off), AVX2 with FMA, AVX-512. */
export const NATIVE_KERNELS = { portable: 1, avx2: 2, avx512: 3 } as const;
export type NativeKernel = (typeof NATIVE_KERNELS)[keyof typeof NATIVE_KERNELS];

/** The kernels as this process runs them: the addon and which of its code paths. */
export interface NormalsNative {
  readonly addon: NormalsAddon;
  readonly kernel: NativeKernel;
}

const ADDON = 'normals.node';
let addon: NormalsAddon | null | undefined;
let best: NativeKernel | undefined;

function loadAddon(): NormalsAddon | null {
  if (addon !== undefined) return addon;
  const at = builtAddonPath(ADDON);
  try {
    addon = at ? (require(at) as NormalsAddon) : null;
  } catch {
    // A copy built for another Node or CPU: the WebAssembly kernels run.
    addon = null;
  }
  return addon;
}

/**
 * Which noise kernels run: unset, the native ones where the CPU has AVX-512 or AVX2 with FMA, else WebAssembly;
 * `avx2`: the native AVX2 code (where the CPU has it, else WebAssembly); `portable`: the native plain C on every CPU
 * (tests); `wasm`: never the native ones. An environment variable, so the generator threads started from here do the same.
 */
export const NOISE_KERNEL_ENV = 'MOE_FORGE_NOISE_KERNEL';
export type NoiseKernelMode = 'avx2' | 'portable' | 'wasm';

/** The native kernels this process uses now, or null (the WebAssembly ones run). */
export function normalsNative(): NormalsNative | null {
  const mode = process.env[NOISE_KERNEL_ENV];
  if (mode === 'wasm') return null;
  const a = loadAddon();
  if (!a) return null;
  best ??= a.supported();
  if (mode === 'portable') return { addon: a, kernel: NATIVE_KERNELS.portable };
  if (mode === 'avx2') return best >= NATIVE_KERNELS.avx2 ? { addon: a, kernel: NATIVE_KERNELS.avx2 } : null;
  // The plain C is slower than WebAssembly's SIMD: where it is all the CPU runs, WebAssembly does.
  return best >= NATIVE_KERNELS.avx2 ? { addon: a, kernel: best } : null;
}

/** Tests and the bench: which noise kernels run from now on (undefined: the default). */
export function setNoiseKernel(mode: NoiseKernelMode | undefined): void {
  if (mode) process.env[NOISE_KERNEL_ENV] = mode;
  else delete process.env[NOISE_KERNEL_ENV];
}
