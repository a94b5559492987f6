import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { ForgeError } from '../errors';
import type { ModelConfig } from '../model-folder';
import { convertBytes, decodeFloats } from '../safetensors';
import { floatTensor, type Session } from './backend';
import { CORE_IO, LAYER_INPUTS, weightInput, type LayerTensor } from './layer-graph';

/**
 * The bf16 forward pass's projections (native/bf16-matmul.c, built by scripts/build.mjs into build/): x W^T with
 * the weights' bf16 values as stored and x rounded to bf16, products summed in float32. AVX512-BF16's vdpbf16ps
 * does two products per lane per instruction, about twice what onnxruntime's float32 Gemm reaches on the same CPU.
 */
interface Native {
  matmul(
    a: Float32Array, w: Uint16Array, bias: Float32Array | null, out: Float32Array, M: number, N: number, K: number,
    mode: number, rowScale: Float32Array | null, w2: Uint16Array | null, bias2: Float32Array | null, threads: number, portable: number,
  ): Promise<void>;
  rmsnorm(x: Float32Array, w: Float32Array, eps: number, out: Float32Array): void;
  map(path: string): ArrayBuffer;
  advise(buffer: ArrayBuffer, offset: number, length: number, willNeed: boolean): void;
  supported(): boolean;
}

const ADDON = 'bf16-matmul.node';
let native: Native | null | undefined;

/** The addon, from build/ beside the bundles or above the sources; null where it was not built (no C compiler). */
function loadNative(): Native | null {
  if (native !== undefined) return native;
  const at = [join(__dirname, ADDON), join(__dirname, '..', ADDON), join(__dirname, '..', '..', 'build', ADDON)].find((p) => existsSync(p));
  native = at ? (require(at) as Native) : null;
  return native;
}

/**
 * Tests and the bench: the portable kernel (the AVX512-BF16 one's sums rounded apart) on every CPU. An environment
 * variable, so forward workers started from here use it too.
 */
const PORTABLE_ENV = 'MOE_FORGE_BF16_KERNEL';
export function usePortableBf16(on: boolean): void {
  if (on) process.env[PORTABLE_ENV] = 'portable';
  else delete process.env[PORTABLE_ENV];
}
const portableKernel = () => process.env[PORTABLE_ENV] === 'portable';

/** Why a machine with this module (null: none built) cannot run the bf16 forward pass; null where it can. */
export function whyBf16Unavailable(n: Pick<Native, 'supported'> | null, portable: boolean): string | null {
  if (!n) return `the bf16 kernels were not built (build/${ADDON} is missing: scripts/build.mjs needs a C compiler and Node's headers)`;
  if (!portable && !n.supported()) return 'this CPU has no AVX512-BF16 instructions (forward precision bf16 needs them; fp32 runs everywhere)';
  return null;
}

/** Why this machine cannot run the bf16 forward pass (null where it can). */
export function bf16Unavailable(): string | null {
  return whyBf16Unavailable(loadNative(), portableKernel());
}

function nativeOrThrow(): Native {
  const why = bf16Unavailable();
  if (why) throw new ForgeError('bf16_unavailable', `forward precision bf16: ${why}`, { field: 'forward_precision' });
  return loadNative()!;
}

export const MATMUL_MODE = { store: 0, addScaled: 1, siluGate: 2 } as const;

/**
 * out = a W^T + bias (store); out += rowScale[m] (a W^T + bias) (addScaled, rowScale null: 1); out = silu(a W^T +
 * bias) * (a W2^T + bias2) (siluGate). a [M, K] float32, W and W2 [N, K] bf16, out [M, N].
 */
export function bf16Matmul(
  a: Float32Array, w: Uint16Array, bias: Float32Array | null, out: Float32Array, M: number, N: number, K: number,
  opts: { mode?: number; rowScale?: Float32Array | null; w2?: Uint16Array | null; bias2?: Float32Array | null; threads?: number } = {},
): Promise<void> {
  return nativeOrThrow().matmul(a, w, bias, out, M, N, K, opts.mode ?? 0, opts.rowScale ?? null, opts.w2 ?? null, opts.bias2 ?? null, opts.threads ?? 2, portableKernel() ? 1 : 0);
}

/** One layer's weights for the bf16 pass: projections as bf16 values, norms and biases as float32. */
export interface Bf16Layer {
  proj: Map<string, Uint16Array>;
  floats: Map<string, Float32Array>;
}

const PROJECTIONS = new Set(['q', 'k', 'v', 'o', 'gate', 'up', 'down']);

/**
 * Where a bf16 pass takes its layers' weights from: each model file mapped (read-only, shared), so the projections
 * are multiplied where the page cache holds them, with no copy into fresh memory (which a VM faults in at about
 * 1 GB/s: the first two layers' buffers cost 0.2 s each at TinyLlama's shape). The next layer is read ahead by the
 * kernel (WILLNEED) while one runs, and a layer's pages leave this process once it ran (DONTNEED; they stay in the
 * page cache), so a pass holds about two layers. A file that cannot be mapped is read into buffers instead.
 */
export class Bf16Weights {
  private readonly maps = new Map<string, ArrayBuffer | null>();
  /** Read fallback: buffers per role, two sets (layer l reads into l % 2 while l - 1 runs). */
  private readonly buffers: Map<string, Buffer>[] = [new Map(), new Map()];

  /** `map: false` reads every file (tests: the fallback gives the mapping's values). */
  constructor(private readonly map = true) {}

  private mapped(file: string): ArrayBuffer | null {
    let m = this.maps.get(file);
    if (m === undefined) {
      if (!this.map) return null;
      try {
        m = loadNative()!.map(file);
      } catch {
        m = null;
      }
      this.maps.set(file, m);
    }
    return m;
  }

  /** A tensor's bytes: a view of its file's mapping (checked against the size mapped), or read. */
  private async bytes(loc: LayerTensor['loc'], role: string, slot: number, copy: boolean): Promise<Uint8Array> {
    const m = this.mapped(loc.file);
    if (m) {
      if (loc.offset + loc.byteLength > m.byteLength) throw new ForgeError('truncated', `file ended while reading ${loc.byteLength} bytes`, { file: loc.file, tensor: loc.name });
      return new Uint8Array(m, loc.offset, loc.byteLength);
    }
    let into = copy ? undefined : this.buffers[slot % 2]!.get(role);
    if (!into || into.length < loc.byteLength) {
      into = Buffer.from(new ArrayBuffer(loc.byteLength)); // 2-aligned, unlike a pooled Buffer
      if (!copy) this.buffers[slot % 2]!.set(role, into);
    }
    const b = into.subarray(0, loc.byteLength);
    await readInto(loc, b);
    return b;
  }

  /** Layer `slot`'s weights: bf16 projections as stored (F32 and F16 ones rounded to bf16), the rest widened. */
  async load(tensors: Map<string, LayerTensor>, slot: number): Promise<Bf16Layer> {
    const proj = new Map<string, Uint16Array>(), floats = new Map<string, Float32Array>();
    await Promise.all(
      [...tensors.values()].map(async (t) => {
        const direct = PROJECTIONS.has(t.role) && t.loc.dtype === 'BF16';
        const bytes = await this.bytes(t.loc, t.role, slot, !direct);
        if (direct && bytes.byteOffset % 2 === 0) {
          proj.set(t.role, new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2));
        } else if (PROJECTIONS.has(t.role)) {
          // An odd offset in its file (no alignment is promised) or another dtype: a copy, as bf16.
          const b = convertBytes(Buffer.from(bytes), t.loc.dtype, 'BF16');
          const own = b.byteOffset % 2 === 0 ? b : Buffer.from(new Uint8Array(b));
          proj.set(t.role, new Uint16Array(own.buffer, own.byteOffset, own.byteLength / 2));
        } else {
          floats.set(t.role, decodeFloats(bytes, t.loc.dtype));
        }
      }),
    );
    return { proj, floats };
  }

  /** WILLNEED (the layer to come: read ahead by the kernel) or DONTNEED (a layer done) on a layer's mapped ranges. */
  advise(tensors: Map<string, LayerTensor>, willNeed: boolean): void {
    for (const t of tensors.values()) {
      const m = this.mapped(t.loc.file);
      if (m && t.loc.offset + t.loc.byteLength <= m.byteLength) loadNative()!.advise(m, t.loc.offset, t.loc.byteLength, willNeed);
    }
  }
}

async function readInto(loc: LayerTensor['loc'], buf: Buffer): Promise<void> {
  const fh = await open(loc.file, 'r');
  try {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await fh.read(buf, done, buf.length - done, loc.offset + done);
      if (bytesRead === 0) throw new ForgeError('truncated', `file ended while reading ${loc.byteLength} bytes`, { file: loc.file, tensor: loc.name });
      done += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

/** RMSNorm of each row of h [rows, H] (sums in float64). */
export function rmsNormRows(h: Float32Array, w: Float32Array, eps: number): Float32Array {
  const H = w.length, out = new Float32Array(h.length);
  for (let r = 0; r < h.length / H; r++) {
    let ss = 0;
    for (let j = 0; j < H; j++) ss += h[r * H + j]! ** 2;
    const inv = 1 / Math.sqrt(ss / H + eps);
    for (let j = 0; j < H; j++) out[r * H + j] = h[r * H + j]! * inv * w[j]!;
  }
  return out;
}

/** rmsNormRows in the native module (the bf16 pass's norms). */
function rmsNormNative(h: Float32Array, w: Float32Array, eps: number): Float32Array {
  const out = new Float32Array(h.length);
  loadNative()!.rmsnorm(h, w, eps, out);
  return out;
}

/**
 * One decoder layer on a pack of N tokens, its projections bf16 (bf16Matmul) and its attention through
 * `core` (buildAttentionCoreModel): the layer's output [N, H] and its router input (the post-attention norm).
 */
export async function runBf16Layer(
  cfg: ModelConfig, core: Session, layer: Bf16Layer, x: Float32Array, pack: Record<string, ReturnType<typeof floatTensor>>, threads: number,
): Promise<{ out: Float32Array; routerInput: Float32Array }> {
  const H = cfg.hiddenSize, I = cfg.intermediateSize, N = x.length / H;
  const qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
  const P = (r: string) => layer.proj.get(r)!;
  const F = (r: string) => layer.floats.get(r) ?? null;
  const xn = rmsNormNative(x, F('ln1')!, cfg.rmsNormEps);
  const q = new Float32Array(N * qDim), k = new Float32Array(N * kvDim), v = new Float32Array(N * kvDim);
  await bf16Matmul(xn, P('q'), F('q_bias'), q, N, qDim, H, { threads });
  await bf16Matmul(xn, P('k'), F('k_bias'), k, N, kvDim, H, { threads });
  await bf16Matmul(xn, P('v'), F('v_bias'), v, N, kvDim, H, { threads });
  const feeds: Record<string, ReturnType<typeof floatTensor>> = {
    [CORE_IO.q]: floatTensor(q, [N, qDim]), [CORE_IO.k]: floatTensor(k, [N, kvDim]), [CORE_IO.v]: floatTensor(v, [N, kvDim]),
  };
  for (const key of [LAYER_INPUTS.cos, LAYER_INPUTS.sin, LAYER_INPUTS.mask, LAYER_INPUTS.slots, LAYER_INPUTS.rows]) feeds[key] = pack[key]!;
  for (const r of ['q_norm', 'k_norm']) {
    const wr = F(r);
    if (wr) feeds[weightInput(r)] = floatTensor(wr, [wr.length]);
  }
  const r = await core.run(feeds);
  const ctxT = r[CORE_IO.ctx]!;
  const ctx = (ctxT.data as Float32Array).slice();
  ctxT.dispose();
  // The residual stream after attention: x + gate * o(ctx) (the pad state's gate is 0).
  const h = x.slice();
  const gate = pack[LAYER_INPUTS.gate]!.data as Float32Array;
  await bf16Matmul(ctx, P('o'), F('o_bias'), h, N, H, qDim, { mode: MATMUL_MODE.addScaled, rowScale: gate, threads });
  const hn = rmsNormNative(h, F('ln2')!, cfg.rmsNormEps);
  const act = new Float32Array(N * I);
  await bf16Matmul(hn, P('gate'), F('gate_bias'), act, N, I, H, { mode: MATMUL_MODE.siluGate, w2: P('up'), bias2: F('up_bias'), threads });
  await bf16Matmul(act, P('down'), F('down_bias'), h, N, H, I, { mode: MATMUL_MODE.addScaled, threads });
  return { out: h, routerInput: hn };
}
