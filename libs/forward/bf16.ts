import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ForgeError } from '../errors';
import type { ModelConfig } from '../model-folder';
import { convertBytes, decodeFloats, dtypeSize, readTensorBytes, readTensorInto } from '../safetensors';
import { floatTensor, type Session } from './backend';
import { CORE_IO, LAYER_INPUTS, weightInput, type LayerTensor } from './layer-graph';

/**
 * The bf16 forward pass's projections (native/bf16-matmul.c, built by scripts/build.mjs into build/): x W^T with
 * the weights' bf16 values as stored and x rounded to bf16, products summed in float32. AVX512-BF16's vdpbf16ps
 * does two products per lane per instruction, about twice what onnxruntime's float32 Gemm reaches on the same CPU.
 * The same kernels run the fp32 pass on bf16 weights ('wide': x kept float32, the weights widened exactly, float32
 * products), where the CPU has AVX-512.
 */
interface Native {
  matmul(
    a: Float32Array, w: Uint16Array, bias: Float32Array | null, out: Float32Array, M: number, N: number, K: number,
    mode: number, rowScale: Float32Array | null, w2: Uint16Array | null, bias2: Float32Array | null, threads: number, portable: number,
    wide: number, f16: number, outCols: number, outCol: number, xTiles: Float32Array | Uint16Array | null, xReady: number,
  ): Promise<void>;
  rmsnorm(x: Float32Array, w: Float32Array, eps: number, out: Float32Array): void;
  supported(): boolean;
  supportedWide(): boolean;
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

/** Throws, naming the option and the reason, where this machine cannot run the bf16 forward pass. */
export function requireBf16(): Native {
  const why = bf16Unavailable();
  if (why) throw new ForgeError('bf16_unavailable', `forward precision bf16: ${why}`, { field: 'forward_precision' });
  return loadNative()!;
}

/**
 * Why this machine cannot run the fp32 pass's native projections (the same kernels with x kept float32 and the
 * bf16 weights widened exactly: AVX-512F and BW, or the portable kernel in tests); null where it can.
 */
export function whyWideUnavailable(n: Pick<Native, 'supportedWide'> | null, portable: boolean): string | null {
  if (!n) return `the native kernels were not built (build/${ADDON} is missing)`;
  if (!portable && !n.supportedWide()) return 'this CPU has no AVX-512 (AVX512F and AVX512BW)';
  return null;
}

/**
 * The fp32 pass's projections run natively here (wide), unless the environment asks for onnxruntime's Gemm
 * (MOE_FORGE_FP32_KERNEL=onnxruntime: the bench's baseline, and a way round should the kernel ever be in doubt).
 */
export const FP32_KERNEL_ENV = 'MOE_FORGE_FP32_KERNEL';
export function wideAvailable(): boolean {
  return process.env[FP32_KERNEL_ENV] !== 'onnxruntime' && wideUnavailable() === null;
}

/** Why this machine cannot run the wide kernel (null where it can). */
export const wideUnavailable = () => whyWideUnavailable(loadNative(), portableKernel());

export const MATMUL_MODE = { store: 0, addScaled: 1, siluGate: 2 } as const;

/** The arithmetic of a native product: 'bf16' rounds x to bf16; 'wide' keeps x float32 (the fp32 pass). */
export type NativeArithmetic = 'bf16' | 'wide';

/** Values of x's tiles for a product of M rows over K (xTiles: whole tiles of 6 rows, K rounded up to 32). */
export const xTilesLength = (M: number, K: number) => Math.ceil(M / 6) * 6 * Math.ceil(K / 32) * 32;

/**
 * out = a W^T + bias (store); out += rowScale[m] (a W^T + bias) (addScaled, rowScale null: 1); out = silu(a W^T +
 * bias) * (a W2^T + bias2) (siluGate). a [M, K] float32, W and W2 [N, K] bf16, out [M, N], or y's columns at
 * [outCol, outCol + N) of rows of `outCols`; `arithmetic` 'wide': x is not rounded to bf16 (the fp32 pass), and W
 * and W2 may be IEEE halves (`f16`). `xTiles` (xTilesLength values; Float32Array for wide, else Uint16Array): x
 * converted into it, or with `xReady` taken from it as a call over the same x left it.
 */
export function bf16Matmul(
  a: Float32Array, w: Uint16Array, bias: Float32Array | null, out: Float32Array, M: number, N: number, K: number,
  opts: {
    mode?: number; rowScale?: Float32Array | null; w2?: Uint16Array | null; bias2?: Float32Array | null; threads?: number; arithmetic?: NativeArithmetic; f16?: boolean;
    outCols?: number; outCol?: number; xTiles?: Float32Array | Uint16Array | null; xReady?: boolean;
  } = {},
): Promise<void> {
  const wide = opts.arithmetic === 'wide';
  const n = wide ? loadNative() : requireBf16();
  if (!n) throw new Error(`native matmul: build/${ADDON} is missing`);
  return n.matmul(
    a, w, bias, out, M, N, K, opts.mode ?? 0, opts.rowScale ?? null, opts.w2 ?? null, opts.bias2 ?? null, opts.threads ?? 2, portableKernel() ? 1 : 0, wide ? 1 : 0, opts.f16 ? 1 : 0,
    opts.outCols ?? N, opts.outCol ?? 0, opts.xTiles ?? null, opts.xReady ? 1 : 0,
  );
}

const PROJECTIONS = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const;
type Projection = (typeof PROJECTIONS)[number];

/**
 * The one dtype every layer's projections are stored in, where the wide products read it as stored ('BF16' or
 * 'F16': each widens to float32 exactly); null otherwise (float32 weights gain nothing, a mix would need a dtype per
 * product).
 */
export function wideDtype(layers: Map<string, LayerTensor>[]): 'BF16' | 'F16' | null {
  const dtypes = new Set(layers.flatMap((l) => PROJECTIONS.map((r) => l.get(r)?.loc.dtype)));
  const [only] = dtypes;
  return dtypes.size === 1 && (only === 'BF16' || only === 'F16') ? only : null;
}

/**
 * A native pass's weights (bf16, or fp32 wide): one buffer per projection, reused from layer to layer, each refilled with the next layer's
 * tensor as soon as this layer's last product with it is done (so the reads run beside the products, and a pass
 * holds one layer's projections: fresh memory, which a VM faults in at about 1 GB/s, is taken once). Read, not
 * mapped: on the VMs measured a first touch of a mapped file's page cost more than copying it (12 ms against 2.4
 * for 23 MB). Norms and biases are read per layer as float32.
 */
export class Bf16Weights {
  private readonly buffers = new Map<Projection, Buffer>();
  /** Per projection, the read under way: which layer, and its values once read. */
  private readonly reads = new Map<Projection, { layer: number; values: Promise<Uint16Array> }>();

  /** Layers from here on are not read (stopAt). */
  private upTo: number;

  /** `halves`: float16 tensors are kept as stored (a wide pass widens them itself), not rounded to bf16. */
  constructor(private readonly layers: Map<string, LayerTensor>[], private readonly halves = false) {
    this.upTo = layers.length;
  }

  /** Layers from `upTo` on are not read (a pass set up ahead learns how many layers it runs when it comes). */
  stopAt(upTo: number): void {
    this.upTo = Math.min(this.upTo, upTo);
  }

  /** Starts the first layer's reads (once: a setup made ahead started them). */
  begin(): void {
    if (this.reads.size > 0) return;
    for (const role of PROJECTIONS) this.read(0, role);
  }

  private read(layer: number, role: Projection): void {
    if (layer >= this.upTo) return;
    const t = this.layers[layer]!.get(role)!;
    const bytes = (t.loc.byteLength / dtypeSize(t.loc.dtype)) * 2;
    let buf = this.buffers.get(role);
    if (!buf || buf.length < bytes) {
      buf = Buffer.from(new ArrayBuffer(bytes)); // its own ArrayBuffer: 2-aligned, unlike a pooled Buffer
      this.buffers.set(role, buf);
    }
    const into = buf;
    const values = (async () => {
      if (t.loc.dtype === 'BF16' || (this.halves && t.loc.dtype === 'F16')) await readTensorInto(t.loc, into);
      else into.set(convertBytes(await readTensorBytes(t.loc), t.loc.dtype, 'BF16'));
      return new Uint16Array(into.buffer, into.byteOffset, bytes / 2);
    })();
    values.catch(() => undefined); // awaited by the product that needs it
    this.reads.set(role, { layer, values });
  }

  /** Layer `layer`'s `role` projection (its read started: by begin, or by the layer before's release). */
  proj(layer: number, role: Projection): Promise<Uint16Array> {
    const r = this.reads.get(role);
    if (r?.layer !== layer) throw new Error(`bf16 weights: ${role} of layer ${layer} was not read ahead (have ${r?.layer})`);
    return r.values;
  }

  /** Layer `layer` is done with `role`: the next layer's tensor goes into its buffer. */
  release(layer: number, role: Projection): void {
    this.read(layer + 1, role);
  }

  /** Layer `layer`'s norms and biases, float32. */
  async floats(layer: number): Promise<Map<string, Float32Array>> {
    const out = new Map<string, Float32Array>();
    await Promise.all(
      [...this.layers[layer]!.values()]
        .filter((t) => !(PROJECTIONS as readonly string[]).includes(t.role))
        .map(async (t) => out.set(t.role, decodeFloats(await readTensorBytes(t.loc), t.loc.dtype))),
    );
    return out;
  }
}

/** RMSNorm of each row of h [rows, H] in the native module (sums in float64; the native pass's norms), into `out`. */
function rmsNormNative(h: Float32Array, w: Float32Array, eps: number, out: Float32Array = new Float32Array(h.length)): Float32Array {
  loadNative()!.rmsnorm(h, w, eps, out);
  return out;
}

/**
 * A pass's working arrays, kept from layer to layer (by name and length): a layer of a 17-prompt pack allocated
 * ~60 MB of them afresh, fresh pages that these VMs fault in at ~2.5 ms per MB once freed memory went back to the
 * host. What a layer returns is never one of them.
 */
export class PassArrays {
  private readonly kept = new Map<string, Float32Array>();
  get(name: string, length: number): Float32Array {
    let a = this.kept.get(name);
    if (a?.length !== length) this.kept.set(name, (a = new Float32Array(length)));
    return a;
  }
}

/** A pack's part of a layer: its hidden states [N, H] and its RoPE, attention and gate inputs (packInputs). */
export interface Bf16Pack {
  x: Float32Array;
  inputs: Record<string, ReturnType<typeof floatTensor>>;
}

/**
 * One decoder layer on every pack, its projections bf16 (bf16Matmul) and its attention through `core`
 * (buildAttentionCoreModel), one projection at a time over all packs so each buffer is released for the next
 * layer's read as soon as it can be: per pack, the layer's output [N, H] and its router input (post-attention norm).
 */
export async function runBf16Layer(
  cfg: ModelConfig, core: Session, weights: Bf16Weights, layer: number, packs: Bf16Pack[],
  opts: { threads: number; arithmetic?: NativeArithmetic; f16?: boolean; arrays?: PassArrays },
): Promise<{ out: Float32Array; routerInput: Float32Array }[]> {
  const { threads, arithmetic = 'bf16', f16 = false, arrays = new PassArrays() } = opts;
  const H = cfg.hiddenSize, I = cfg.intermediateSize;
  const qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
  const floats = await weights.floats(layer);
  const F = (r: string) => floats.get(r) ?? null;
  const rows = (p: Bf16Pack) => p.x.length / H;
  const xn = packs.map((p, i) => rmsNormNative(p.x, F('ln1')!, cfg.rmsNormEps, arrays.get(`xn${i}`, p.x.length)));
  const project = async (role: 'q' | 'k' | 'v', dim: number) => {
    const w = await weights.proj(layer, role);
    const outs: Float32Array[] = [];
    for (const [i, p] of packs.entries()) {
      outs.push(arrays.get(`${role}${i}`, rows(p) * dim));
      await bf16Matmul(xn[i]!, w, F(`${role}_bias`), outs[i]!, rows(p), dim, H, { threads, arithmetic, f16 });
    }
    weights.release(layer, role);
    return outs;
  };
  const q = await project('q', qDim), k = await project('k', kvDim), v = await project('v', kvDim);
  const ctx: Float32Array[] = [];
  for (const [i, p] of packs.entries()) {
    const N = rows(p);
    const feeds: Record<string, ReturnType<typeof floatTensor>> = { [CORE_IO.q]: floatTensor(q[i]!, [N, qDim]), [CORE_IO.k]: floatTensor(k[i]!, [N, kvDim]), [CORE_IO.v]: floatTensor(v[i]!, [N, kvDim]) };
    for (const key of [LAYER_INPUTS.cos, LAYER_INPUTS.sin, LAYER_INPUTS.mask, LAYER_INPUTS.slots, LAYER_INPUTS.rows]) feeds[key] = p.inputs[key]!;
    for (const r of ['q_norm', 'k_norm']) {
      const wr = F(r);
      if (wr) feeds[weightInput(r)] = floatTensor(wr, [wr.length]);
    }
    const t = (await core.run(feeds))[CORE_IO.ctx]!;
    const c = arrays.get(`ctx${i}`, (t.data as Float32Array).length);
    c.set(t.data as Float32Array);
    ctx.push(c);
    t.dispose();
  }
  // The residual stream after attention: x + gate * o(ctx) (the pad state's gate is 0).
  const h = packs.map((p) => p.x.slice());
  const wo = await weights.proj(layer, 'o');
  for (const [i, p] of packs.entries()) {
    await bf16Matmul(ctx[i]!, wo, F('o_bias'), h[i]!, rows(p), H, qDim, { mode: MATMUL_MODE.addScaled, rowScale: p.inputs[LAYER_INPUTS.gate]!.data as Float32Array, threads, arithmetic, f16 });
  }
  weights.release(layer, 'o');
  const hn = h.map((x) => rmsNormNative(x, F('ln2')!, cfg.rmsNormEps));
  const [wg, wu] = [await weights.proj(layer, 'gate'), await weights.proj(layer, 'up')];
  const act: Float32Array[] = [];
  for (const [i, p] of packs.entries()) {
    act.push(arrays.get(`act${i}`, rows(p) * I));
    await bf16Matmul(hn[i]!, wg, F('gate_bias'), act[i]!, rows(p), I, H, { mode: MATMUL_MODE.siluGate, w2: wu, bias2: F('up_bias'), threads, arithmetic, f16 });
  }
  weights.release(layer, 'gate');
  weights.release(layer, 'up');
  const wd = await weights.proj(layer, 'down');
  for (const [i, p] of packs.entries()) await bf16Matmul(act[i]!, wd, F('down_bias'), h[i]!, rows(p), H, I, { mode: MATMUL_MODE.addScaled, threads, arithmetic, f16 });
  weights.release(layer, 'down');
  return packs.map((_, i) => ({ out: h[i]!, routerInput: hn[i]! }));
}
