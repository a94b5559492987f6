import { existsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The noise's native kernels (native/normals.c, built by scripts/build.mjs into build/normals.node): mt19937 words
 * and the Box-Muller blocks of torch-rng.ts, and the addition of noise to bfloat16 and float32 weights, the same bits
 * as the WebAssembly kernels, ~5x faster where the CPU has AVX-512. Absent (no C compiler, or a CPU without
 * AVX-512), the WebAssembly kernels run as before.
 */
interface NormalsAddon {
  normals(state: Int32Array, pos: number, out: Float32Array, portable: boolean): number;
  twist(state: Int32Array, times: number, portable: boolean): void;
  apply(dtype: 0 | 1, src: Uint8Array, norm: Float32Array, dst: Uint8Array, scale: number, portable: boolean): void;
  supported(): boolean;
}

/** The kernels as this process runs them: the addon and whether its portable C path is forced. */
export interface NormalsNative {
  readonly addon: NormalsAddon;
  readonly portable: boolean;
}

const ADDON = 'normals.node';
let addon: NormalsAddon | null | undefined;
let supported: boolean | undefined;

function loadAddon(): NormalsAddon | null {
  if (addon !== undefined) return addon;
  const at = [join(__dirname, ADDON), join(__dirname, '..', ADDON), join(__dirname, '..', '..', 'build', ADDON)].find((p) => existsSync(p));
  try {
    addon = at ? (require(at) as NormalsAddon) : null;
  } catch {
    // A copy built for another Node or CPU: the WebAssembly kernels run.
    addon = null;
  }
  return addon;
}

/**
 * Which noise kernels run: unset, the native ones where the CPU has AVX-512, else WebAssembly; `portable`: the
 * native ones' plain C path on every CPU (tests); `wasm`: never the native ones. An environment variable, so the
 * generator threads started from here do the same.
 */
export const NOISE_KERNEL_ENV = 'MOE_FORGE_NOISE_KERNEL';

/** The native kernels this process uses now, or null (the WebAssembly ones run). */
export function normalsNative(): NormalsNative | null {
  const mode = process.env[NOISE_KERNEL_ENV];
  if (mode === 'wasm') return null;
  const a = loadAddon();
  if (!a) return null;
  if (mode === 'portable') return { addon: a, portable: true };
  supported ??= a.supported();
  return supported ? { addon: a, portable: false } : null;
}

/** Tests and the bench: which noise kernels run from now on (undefined: the default). */
export function setNoiseKernel(mode: 'portable' | 'wasm' | undefined): void {
  if (mode) process.env[NOISE_KERNEL_ENV] = mode;
  else delete process.env[NOISE_KERNEL_ENV];
}
