import { open, type FileHandle } from 'node:fs/promises';
import { ForgeError } from '../errors';
import { builtAddonPath } from '../util';
import type { ModelConfig } from '../model-folder';
import { convertBytes, decodeFloats, dtypeSize, readTensorFrom, type TensorLocation } from '../safetensors';
import type { LayerTensor } from './layer-graph';

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
  attention(
    q: Float32Array, k: Float32Array, v: Float32Array, cos: Float32Array, sin: Float32Array, qNorm: Float32Array | null, kNorm: Float32Array | null, eps: number,
    segs: Int32Array, nH: number, nKV: number, D: number, window: number, ctx: Float32Array, threads: number, portable: number,
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
  const at = builtAddonPath(ADDON);
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

/** Values of x's tiles for a product of M rows over K (xTiles: whole tiles of 6 rows, wide 80, K rounded up to 32). */
export const xTilesLength = (M: number, K: number, arithmetic: NativeArithmetic = 'bf16') => Math.ceil(M / (arithmetic === 'wide' ? 80 : 6)) * (arithmetic === 'wide' ? 80 : 6) * Math.ceil(K / 32) * 32;

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

/** A run of one projection's rows as a pass takes them: gate's carries up's same rows (the siluGate product). */
type StreamRole = 'q' | 'k' | 'v' | 'o' | 'gate' | 'down';
const STREAM_ROLES: readonly StreamRole[] = ['q', 'k', 'v', 'o', 'gate', 'down'];

/** Where a piece is: rows [r0, r1) of layer `layer`'s `role` projection (and up's, for gate). */
interface PiecePlan {
  layer: number;
  role: StreamRole;
  r0: number;
  r1: number;
}

/** A piece as read: its rows' values, bf16 or (wide) as stored. */
export interface WeightPiece extends PiecePlan {
  w: Uint16Array;
  w2: Uint16Array | null;
}

/**
 * The stream's defaults: four buffers of 8 MB. Measured in one-prompt passes (medium and Mistral-7B shapes), 4 MB
 * to 32 MB pieces and 3 to 6 buffers were within noise of each other once the pool ran queued pieces back to back.
 */
export const STREAM_SLOTS = 4;
export const STREAM_SLOT_BYTES = 8 << 20;
/** Rows of a piece are whole blocks of the kernel's (NB_WIDE, NB: 64 rows). */
const PIECE_ROWS = 64;
/**
 * Tests and the bench: the stream's buffer size in bytes (1: every piece 64 rows). An environment variable, so
 * forward workers started from here take it too.
 */
export const PIECE_BYTES_ENV = 'MOE_FORGE_WEIGHT_PIECE_BYTES';
function pieceBytesFromEnv(): number | undefined {
  const v = Number(process.env[PIECE_BYTES_ENV]);
  return Number.isInteger(v) && v > 0 ? v : undefined;
}

/**
 * A native pass's weights (bf16, or fp32 wide), streamed: every layer's projections, in the order the pass takes
 * them, cut into pieces of whole 64-row blocks of a few MB, each read into one of a few buffers kept for the pass
 * and refilled with the next piece once the products with it are done. A product over a range of W's rows is
 * independent of the others (its columns of the output), so a pass holds a few pieces, not a layer: a 7B layer's
 * projections were 436 MB of fresh memory per command, which these VMs fault in at 1.5-3.3 ms per MB once the host
 * has taken freed memory back (now 4 x 8 MB), and the reads run beside the products piece by piece. Read, not
 * mapped: on the VMs measured a first touch of a mapped file's page cost more than copying it (12 ms against 2.4
 * for 23 MB; and still ~3x once MADV_POPULATE_READ had mapped the pages). Norms and biases are read per layer as
 * float32.
 */
export class WeightStream {
  private plan: PiecePlan[] = [];
  private readonly slots: (Buffer | null)[];
  private readonly free: number[];
  /** Reads started, by the piece's place in the plan. */
  private readonly reads = new Map<number, { slot: number; piece: Promise<WeightPiece> }>();
  /** Pieces asked for before a buffer was free for their read. */
  private readonly waiting = new Map<number, (piece: Promise<WeightPiece>) => void>();
  private nextRead = 0;
  private nextTake = 0;
  private readonly slotBytes: number;
  private began = false;
  /**
   * The weight files, each opened once for the pass (a piece's read opened and closed its file: three trips through
   * libuv's pool where one does), closed once the plan's last read is done (a norm read later opens its file again),
   * and by close(), which the pass's end calls.
   */
  private readonly files = new Map<string, Promise<FileHandle>>();
  private reading = 0;

  /** `halves`: float16 tensors are kept as stored (a wide pass widens them itself), not rounded to bf16. */
  constructor(private readonly layers: Map<string, LayerTensor>[], private readonly halves = false, opts: { slots?: number; slotBytes?: number } = {}) {
    const slots = Math.max(1, opts.slots ?? STREAM_SLOTS);
    const target = opts.slotBytes ?? pieceBytesFromEnv() ?? STREAM_SLOT_BYTES;
    this.slots = Array.from({ length: slots }, () => null);
    this.free = Array.from({ length: slots }, (_, i) => i);
    for (const [layer, tensors] of layers.entries()) {
      for (const role of STREAM_ROLES) {
        const [N, K] = tensors.get(role)!.loc.shape as [number, number];
        const rowBytes = K * 2 * (role === 'gate' ? 2 : 1);
        // As few pieces as fit the target, their rows spread evenly in whole blocks.
        const pieces = Math.max(1, Math.ceil(N / Math.max(PIECE_ROWS, Math.floor(target / rowBytes / PIECE_ROWS) * PIECE_ROWS)));
        const rows = Math.ceil(N / pieces / PIECE_ROWS) * PIECE_ROWS;
        for (let r0 = 0; r0 < N; r0 += rows) this.plan.push({ layer, role, r0, r1: Math.min(N, r0 + rows) });
      }
    }
    this.slotBytes = Math.max(0, ...this.plan.map((p) => this.pieceBytes(p)));
  }

  /** A piece's bytes in its buffer (up's rows start at a 64-byte boundary after gate's). */
  private pieceBytes(p: PiecePlan): number {
    const K = this.layers[p.layer]!.get(p.role)!.loc.shape[1]!;
    const one = Math.ceil(((p.r1 - p.r0) * K * 2) / 64) * 64;
    return p.role === 'gate' ? 2 * one : one;
  }

  /** Layers from `upTo` on are not read (a pass set up ahead learns how many layers it runs when it comes). */
  stopAt(upTo: number): void {
    const cut = this.plan.findIndex((p) => p.layer >= upTo);
    if (cut >= 0) this.plan = this.plan.slice(0, Math.max(cut, this.nextRead));
    this.closeWhenRead();
  }

  /** Closes the weight files (reads still under way fail; nobody waits for them then). */
  async close(): Promise<void> {
    const files = [...this.files.values()];
    this.files.clear();
    await Promise.all(files.map((f) => f.then((fh) => fh.close(), () => undefined).catch(() => undefined)));
  }

  private closeWhenRead(): void {
    if (this.reading === 0 && this.nextRead >= this.plan.length && this.files.size > 0) void this.close();
  }

  /** A tensor's bytes (norms, biases, pieces stored in another dtype) through the pass's handle of its file. */
  private async bytes(loc: TensorLocation): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(loc.byteLength);
    this.reading++;
    try {
      await readTensorFrom(await this.file(loc.file), loc, buf);
      return buf;
    } finally {
      this.reading--;
      this.closeWhenRead();
    }
  }

  private file(path: string): Promise<FileHandle> {
    let f = this.files.get(path);
    if (!f) {
      f = open(path, 'r');
      f.catch(() => undefined); // the read that needs it meets the error
      this.files.set(path, f);
    }
    return f;
  }

  /** Starts the first pieces' reads (once: a setup made ahead started them). */
  begin(): void {
    if (this.began) return;
    this.began = true;
    if (this.layers.length > 0) this.readFloats(0);
    this.pump();
  }

  private pump(): void {
    while (this.free.length > 0 && this.nextRead < this.plan.length) {
      const at = this.nextRead++;
      const slot = this.free.shift()!;
      const piece = this.read(this.plan[at]!, slot);
      piece.catch(() => undefined); // awaited by the product that needs it
      this.reads.set(at, { slot, piece });
      this.waiting.get(at)?.(piece);
      this.waiting.delete(at);
    }
  }

  private async read(p: PiecePlan, slot: number): Promise<WeightPiece> {
    const buf = (this.slots[slot] ??= Buffer.from(new ArrayBuffer(this.slotBytes))); // its own ArrayBuffer: aligned, unlike a pooled Buffer
    const tensors = this.layers[p.layer]!;
    const one = this.pieceBytes(p) / (p.role === 'gate' ? 2 : 1);
    const rows = async (role: string, at: number) => {
      const { loc } = tensors.get(role)!;
      const K = loc.shape[1]!, size = dtypeSize(loc.dtype), values = (p.r1 - p.r0) * K;
      const range = { ...loc, offset: loc.offset + p.r0 * K * size, byteLength: values * size };
      const into = buf.subarray(at, at + values * 2);
      if (loc.dtype === 'BF16' || (this.halves && loc.dtype === 'F16')) await readTensorFrom(await this.file(loc.file), range, into);
      else into.set(convertBytes(await this.bytes(range), loc.dtype, 'BF16'));
      return new Uint16Array(buf.buffer, buf.byteOffset + at, values);
    };
    this.reading++;
    try {
      const [w, w2] = await Promise.all([rows(p.role, 0), p.role === 'gate' ? rows('up', one) : null]);
      return { ...p, w, w2 };
    } finally {
      this.reading--;
      this.closeWhenRead();
    }
  }

  /**
   * Layer `layer`'s `role` projection, piece by piece (gate's with up's rows), in the plan's order: `product` is
   * given each piece once it is read and returns its products, which are not awaited before the next piece is handed
   * over (the kernel's pool runs them one after another, with no trip back to JavaScript between: 8 MB pieces
   * awaited one by one made a 7B pass slower than whole projections). A piece's buffer takes the next read once its
   * products are done. Resolves when every product is done; products are never left running on a buffer.
   *
   * Calls are served in the order made: one made before the last has taken all its pieces waits for that, not for
   * its products (q, k and v over the same x are asked for at once, and their products queue back to back: awaited
   * one projection at a time, the pool ran dry between them); its role must then be next in the plan.
   */
  each(layer: number, role: StreamRole, product: (piece: WeightPiece) => Promise<unknown>[]): Promise<void> {
    const before = this.turn;
    let taken!: () => void;
    this.turn = new Promise<void>((r) => (taken = r));
    const next = (at: number) => {
      const p = this.plan[at];
      return p !== undefined && p.layer === layer && p.role === role;
    };
    return (async () => {
      const pending: Promise<void>[] = [];
      try {
        await before;
        if (!next(this.nextTake)) {
          const p = this.plan[this.nextTake];
          throw new Error(`weight stream: ${role} of layer ${layer} is not next (${p ? `${p.role} of layer ${p.layer}` : 'nothing left'})`);
        }
        for (let at = this.nextTake; next(at); at++) {
          this.nextTake = at + 1;
          const piece = await this.pieceAt(at);
          pending.push(Promise.all(product(piece)).then(() => this.done(at)));
        }
      } finally {
        taken();
        await Promise.allSettled(pending);
      }
      await Promise.all(pending);
    })();
  }

  /** Settled once the last each() call has taken all its pieces (the next call's turn). */
  private turn: Promise<void> = Promise.resolve();

  /** The piece at `at` in the plan, once its read (started when a buffer is free) is done. */
  private pieceAt(at: number): Promise<WeightPiece> {
    const r = this.reads.get(at);
    if (r) return r.piece;
    return new Promise((resolve, reject) => this.waiting.set(at, (piece) => piece.then(resolve, reject)));
  }

  private done(at: number): void {
    const r = this.reads.get(at);
    if (!r) return;
    this.reads.delete(at);
    this.free.push(r.slot);
    this.pump();
  }

  private readonly floatReads = new Map<number, Promise<Map<string, Float32Array>>>();

  /**
   * Layer `layer`'s norms and biases, float32; the next layer's are read from here on (a few KB each, queued in
   * libuv's pool behind the pieces' reads they waited 2-3 ms a layer when read as the layer began).
   */
  floats(layer: number): Promise<Map<string, Float32Array>> {
    const got = this.readFloats(layer);
    this.floatReads.delete(layer);
    if (layer + 1 < this.layers.length) this.readFloats(layer + 1);
    return got;
  }

  private readFloats(layer: number): Promise<Map<string, Float32Array>> {
    let r = this.floatReads.get(layer);
    if (!r) {
      r = (async () => {
        const out = new Map<string, Float32Array>();
        await Promise.all(
          [...this.layers[layer]!.values()]
            .filter((t) => !(PROJECTIONS as readonly string[]).includes(t.role))
            .map(async (t) => out.set(t.role, decodeFloats(await this.bytes(t.loc), t.loc.dtype))),
        );
        return out;
      })();
      r.catch(() => undefined); // awaited by the layer that needs it
      this.floatReads.set(layer, r);
    }
    return r;
  }
}

const copyInto = (to: Float32Array, from: Float32Array): Float32Array => {
  to.set(from);
  return to;
};

/** RMSNorm of each row of h [rows, H] in the native module (sums in float64; the native pass's norms), into `out`. */
function rmsNormNative(h: Float32Array, w: Float32Array, eps: number, out: Float32Array = new Float32Array(h.length)): Float32Array {
  loadNative()!.rmsnorm(h, w, eps, out);
  return out;
}

/**
 * A pass's working arrays, kept from layer to layer (by name and length): a layer of a 17-prompt pack allocated
 * ~60 MB of them afresh, fresh pages that these VMs fault in at ~2.5 ms per MB once freed memory went back to the
 * host. What a layer returns is one of them only where its caller said it copies what it keeps (runBf16Layer's `reuse`).
 */
export class PassArrays {
  private readonly kept = new Map<string, Float32Array>();
  get(name: string, length: number): Float32Array {
    let a = this.kept.get(name);
    if (a?.length !== length) this.kept.set(name, (a = new Float32Array(length)));
    return a;
  }
}

/** A pack's tables (run.ts, packTables): RoPE's cos and sin [N, D], the attention gate per row, each prompt's [start, length] rows. */
export interface PackTables {
  cos: Float32Array;
  sin: Float32Array;
  gate: Float32Array;
  segs: Int32Array;
}

/** A pack's part of a layer: its hidden states [N, H] and its tables. */
export interface Bf16Pack {
  x: Float32Array;
  tables: PackTables;
}

/**
 * The attention between a layer's projections (native/bf16-matmul.c): per prompt of the pack and key/value head,
 * qwen3's per-head norms where given, RoPE and causal softmax attention (within `cfg.slidingWindow` where set), the
 * context [N, nH * D] into `ctx`. Float32, each sum in a fixed order: a prompt's context is the same bits alone or
 * packed. Off the JavaScript thread, on the products' pool.
 */
export function nativeAttention(
  cfg: Pick<ModelConfig, 'numHeads' | 'numKvHeads' | 'headDim' | 'rmsNormEps' | 'slidingWindow'>, q: Float32Array, k: Float32Array, v: Float32Array, tables: Pick<PackTables, 'cos' | 'sin' | 'segs'>,
  norms: { q: Float32Array | null; k: Float32Array | null }, ctx: Float32Array, threads: number,
): Promise<void> {
  const n = loadNative();
  if (!n) throw new ForgeError('bf16_unavailable', whyBf16Unavailable(null, false)!);
  return n.attention(q, k, v, tables.cos, tables.sin, norms.q, norms.k, cfg.rmsNormEps, tables.segs, cfg.numHeads, cfg.numKvHeads, cfg.headDim, cfg.slidingWindow ?? 0, ctx, threads, portableKernel() ? 1 : 0);
}

/**
 * x's tiles for the native products over one x (a pack's normed states, attention context, activation): the
 * first product converts x into them, the rest (every piece of its projections) take them as they are.
 */
class XTiles {
  private ready = false;
  constructor(private readonly tiles: Float32Array | Uint16Array) {}
  /** The product's options: the tiles, and whether x is in them already (from here on it is). */
  take(): { xTiles: Float32Array | Uint16Array; xReady: boolean } {
    const xReady = this.ready;
    this.ready = true;
    return { xTiles: this.tiles, xReady };
  }
}

/**
 * One decoder layer on every pack, its projections (bf16Matmul) and its attention (nativeAttention) native: each projection a piece of its rows at a time over all packs (WeightStream.each, the
 * products queued as the pieces come), each piece's columns written into the whole output, x converted once per
 * pack for all the pieces that take it (the pool runs a pass's products in the order given). Per
 * pack: the layer's output [N, H] and its router input (post-attention norm).
 */
export async function runBf16Layer(
  cfg: ModelConfig, weights: WeightStream, layer: number, packs: Bf16Pack[],
  opts: { threads: number; arithmetic?: NativeArithmetic; f16?: boolean; arrays?: PassArrays; reuse?: boolean },
): Promise<{ out: Float32Array; routerInput: Float32Array }[]> {
  const { threads, arithmetic = 'bf16', f16 = false, arrays = new PassArrays(), reuse = false } = opts;
  const H = cfg.hiddenSize, I = cfg.intermediateSize;
  const qDim = cfg.numHeads * cfg.headDim, kvDim = cfg.numKvHeads * cfg.headDim;
  const floats = await weights.floats(layer);
  const F = (r: string) => floats.get(r) ?? null;
  const piece = (b: Float32Array | null, p: WeightPiece) => b?.subarray(p.r0, p.r1) ?? null;
  const rows = (p: Bf16Pack) => p.x.length / H;
  // Kept from layer to layer as the other arrays are (by name and length); bf16's are halves of float32 arrays.
  const tiles = (name: string, M: number, K: number) => {
    const n = xTilesLength(M, K, arithmetic);
    if (arithmetic === 'wide') return new XTiles(arrays.get(name, n));
    const f = arrays.get(name, n / 2);
    return new XTiles(new Uint16Array(f.buffer, f.byteOffset, n));
  };
  const xn = packs.map((p, i) => rmsNormNative(p.x, F('ln1')!, cfg.rmsNormEps, arrays.get(`xn${i}`, p.x.length)));
  const xnTiles = packs.map((p, i) => tiles(`tilesH${i}`, rows(p), H));
  const project = async (role: 'q' | 'k' | 'v', dim: number) => {
    const outs = packs.map((p, i) => arrays.get(`${role}${i}`, rows(p) * dim));
    await weights.each(layer, role, (w) =>
      packs.map((p, i) => bf16Matmul(xn[i]!, w.w, piece(F(`${role}_bias`), w), outs[i]!, rows(p), w.r1 - w.r0, H, { threads, arithmetic, f16, outCols: dim, outCol: w.r0, ...xnTiles[i]!.take() })),
    );
    return outs;
  };
  // Asked for at once: their products queue back to back over xn's tiles (converted by q's first).
  const [q, k, v] = await Promise.all([project('q', qDim), project('k', kvDim), project('v', kvDim)]);
  // Every pack's attention queued at once (the pool runs them back to back).
  const ctx = packs.map((p, i) => arrays.get(`ctx${i}`, rows(p) * qDim));
  await Promise.all(packs.map((p, i) => nativeAttention(cfg, q[i]!, k[i]!, v[i]!, p.tables, { q: F('q_norm'), k: F('k_norm') }, ctx[i]!, threads)));
  // The residual stream after attention: x + gate * o(ctx) (the pad state's gate is 0).
  // Fresh unless `reuse` (the caller copies what it keeps, and the pack's x is a copy of the last layer's output):
  // then arrays of the pass, rewritten by the next layer.
  const h = packs.map((p, i) => (reuse ? copyInto(arrays.get(`h${i}`, p.x.length), p.x) : p.x.slice()));
  const ctxTiles = packs.map((p, i) => tiles(`tilesQ${i}`, rows(p), qDim));
  await weights.each(layer, 'o', (w) =>
    packs.map((p, i) => bf16Matmul(ctx[i]!, w.w, piece(F('o_bias'), w), h[i]!, rows(p), w.r1 - w.r0, qDim, {
      mode: MATMUL_MODE.addScaled, rowScale: p.tables.gate, threads, arithmetic, f16, outCols: H, outCol: w.r0, ...ctxTiles[i]!.take(),
    })),
  );
  const hn = h.map((x, i) => rmsNormNative(x, F('ln2')!, cfg.rmsNormEps, reuse ? arrays.get(`hn${i}`, x.length) : undefined));
  const hnTiles = packs.map((p, i) => tiles(`tilesH${i}`, rows(p), H)); // xn's tiles are done with
  const act = packs.map((p, i) => arrays.get(`act${i}`, rows(p) * I));
  await weights.each(layer, 'gate', (w) =>
    packs.map((p, i) => bf16Matmul(hn[i]!, w.w, piece(F('gate_bias'), w), act[i]!, rows(p), w.r1 - w.r0, H, {
      mode: MATMUL_MODE.siluGate, w2: w.w2, bias2: piece(F('up_bias'), w), threads, arithmetic, f16, outCols: I, outCol: w.r0, ...hnTiles[i]!.take(),
    })),
  );
  const actTiles = packs.map((p, i) => tiles(`tilesI${i}`, rows(p), I));
  await weights.each(layer, 'down', (w) =>
    packs.map((p, i) => bf16Matmul(act[i]!, w.w, piece(F('down_bias'), w), h[i]!, rows(p), w.r1 - w.r0, I, { mode: MATMUL_MODE.addScaled, threads, arithmetic, f16, outCols: H, outCol: w.r0, ...actTiles[i]!.take() })),
  );
  return packs.map((_, i) => ({ out: h[i]!, routerInput: hn[i]! }));
}
