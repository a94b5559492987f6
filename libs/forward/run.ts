import { open, type FileHandle } from 'node:fs/promises';
import { ForgeError, ModelError } from '../errors';
import { readModelConfig, type ModelConfig } from '../model-folder';
import { convertBytes, decodeFloats, readRows, readTensorBytes, type TensorIndex } from '../safetensors';
import { openWeights } from '../model-folder';
import { WasmFloatBuffer, castThrough, floatKernels } from '../safetensors';
import { executionProviders, floatTensor, int64Tensor, sessionFromBytes, type Device, type ExternalData, type Session, type SessionSettings } from './backend';
import { encodeModel } from './onnx-proto';
import { ATTN_OUTPUT, LAYER_INPUTS, LAYER_OUTPUT, MLP_IO, ROUTER_INPUT, buildLayerModel, checkTensor, int8BlockSize, layerPhases, layerSignature, mlpDownModel, mlpUpModel, planLayerTensors, weightInput, type LayerPhase, type LayerTensor } from './layer-graph';
import { attentionMask, ropeTables } from './rope';
import { mallocHugePages } from './huge-pages';
import { WeightStream, PassArrays, bf16Unavailable, requireBf16, runBf16Layer, wideAvailable, wideDtype, type NativeArithmetic, type PackTables } from './bf16';
import { folderKeys, nowNs } from '../util';

export interface ForwardProgress {
  /** The decoder layer being run (0-based). */
  layer: number;
  /** Decoder layers this call runs. */
  layers: number;
  promptsDone: number;
  prompts: number;
}

export interface ForwardOptions {
  device?: Device;
  onProgress?: (p: ForwardProgress) => void;
  /** intra-op threads per session (default 2). */
  threads?: number;
  /**
   * Most tokens run together (default 2048): prompts are packed one after another up to this many, each
   * attending only to itself; 1 runs every prompt alone. Larger runs keep the Gemms efficient (each run also
   * repacks every weight); activations grow with it (at hidden 2048 / intermediate 5632, about 0.2 GB).
   */
  packTokens?: number;
  /** Also hand each layer's router input (post-attention RMSNorm output) to the visitor. */
  routerInput?: boolean;
  /** A model folder of the same shape whose MLP tensors (`.mlp.`) replace the model's: an expert's MLPs behind the base's attention. */
  mlpFrom?: string;
  /**
   * 'fp32' (default): exact float32 arithmetic on the stored weights (where every projection is stored bf16, or every
   * one float16, and the CPU has AVX-512, its projections run in native/bf16-matmul.c's wide kernel: float32 products of the widened
   * weights, no float32 copy of a layer made; elsewhere onnxruntime's Gemm). 'int8': the projections as 8-bit blocks
   * (symmetric, a float32 scale per 32 values) through onnxruntime's MatMulNBits with int8 activations: faster on
   * CPUs with VNNI, not exact (its states differ from fp32 ones and are cached apart). 'bf16': the projections
   * in native/bf16-matmul.c (the stored bf16 weights times activations rounded to bf16, summed in float32; on CPUs
   * with AVX512-BF16), norms, RoPE and attention in float32; not exact, cached apart; 1.5-2x fp32's speed.
   */
  precision?: ForwardPrecision;
  /**
   * Float32 bytes of MLP weights per piece (default MLP_PIECE_BYTES): a layer whose MLP holds more than twice
   * that runs its attention, then its MLP in pieces of channels and of down_proj's rows (fp32 only), so a pass
   * holds its attention's weights and a piece of each kind, not the whole layer (layerPhases).
   */
  mlpBytes?: number;
}

/**
 * Default ForwardOptions.mlpBytes. TinyLlama's MLP (138 MB of float32) runs whole: in pieces its edits were
 * slower (more sessions and runs than the fresh pages they spare). Mistral-7B's (705 MB) runs in 4 pieces of
 * gate/up channels and 2 of down_proj rows (117 MB each), so a pass holds 0.4 GB of weights, not 0.87 GB.
 */
export const MLP_PIECE_BYTES = 128 << 20;

export const FORWARD_PRECISIONS = ['fp32', 'int8', 'bf16'] as const;
export type ForwardPrecision = (typeof FORWARD_PRECISIONS)[number];

/** One prompt's state at one layer input: last token, sum over tokens (float64-accumulated), token count. */
export interface LayerState {
  last: Float32Array;
  sum: Float32Array;
  count: number;
}

export interface Sequence {
  ids: number[];
  /** 0 for the pad state: the layer runs without its attention term. */
  attnGate: 0 | 1;
}

/** One pack's states, one sequence after another: [N, H] with N the pack's tokens. */
export function packStates(seqs: Sequence[], members: number[], states: Float32Array[], H: number, into?: (n: number) => Float32Array): { N: number; hidden: Float32Array } {
  const N = members.reduce((a, i) => a + seqs[i]!.ids.length, 0);
  const hidden = into?.(N * H) ?? new Float32Array(N * H);
  let at = 0;
  for (const i of members) {
    hidden.set(states[i]!, at * H);
    at += seqs[i]!.ids.length;
  }
  return { N, hidden };
}

/** Per sequence, the [T, H] states at layer inputs 0..upTo (upTo = L is the last layer's output, before the final norm). */
type Visit = (seq: number, entry: number, states: Float32Array, routerIn?: Float32Array) => void;

interface Model {
  cfg: ModelConfig;
  weights: TensorIndex;
}

async function openModel(dir: string, mlpFrom?: string): Promise<Model> {
  const cfg = await readModelConfig(dir);
  // A .bin checkpoint's stored tensors are read in place just like safetensors.
  const weights = await openWeights(dir);
  if (!mlpFrom) return { cfg, weights };
  const mlp = await openWeights(mlpFrom);
  const pick = (name: string) => (name.includes('.mlp.') ? mlp : weights);
  return { cfg, weights: { dir, has: (n) => pick(n).has(n), get: (n) => pick(n).get(n) } };
}

/** Reads and decodes only the embedding rows that the sequences use. */
async function embedRows(m: Model, ids: Iterable<number>): Promise<Map<number, Float32Array>> {
  const loc = m.weights.get('model.embed_tokens.weight');
  checkTensor(loc, [loc.shape[0] ?? 0, m.cfg.hiddenSize]);
  return readRows(loc, ids);
}

/**
 * Where one role's weights land, reused every other layer so that no layer pays for fresh memory: a WebAssembly
 * memory of its own where the SIMD kernels run (16-bit weights widen where they were read, and onnxruntime reads
 * the floats from there), or, where malloc gives huge pages (fewer faults than that memory's 4 KiB pages), a plain
 * Float32Array widened through the kernels' memory a block at a time; in JavaScript where there are no kernels.
 */
export class WeightBuffer {
  private wasm: WasmFloatBuffer | null;
  private plain: Float32Array | null = null;

  /** `wasm: false`: plain memory, widened through the kernels' memory (where malloc gives huge pages). */
  constructor(wasm = !mallocHugePages()) {
    this.wasm = wasm ? WasmFloatBuffer.create() : null;
  }

  /** n float32 values; all n must be written before use (a reused buffer holds the last layer's values). */
  floats(n: number): Float32Array {
    if (this.wasm) {
      try {
        return this.wasm.floats(n);
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
        this.wasm = null; // larger than a WebAssembly memory holds, or it cannot grow: plain memory
      }
    }
    if (!this.plain || this.plain.length < n) this.plain = new Float32Array(n);
    return this.plain.subarray(0, n);
  }

  /** Float32 values of `src` (stored bytes of `dtype`: F32, BF16 or F16), in this buffer. */
  load(src: Uint8Array, dtype: string): Float32Array {
    const n = src.length / (dtype === 'F32' ? 4 : 2);
    const { floats, stored } = this.stage(n, dtype);
    stored.set(src);
    this.widenRange(floats, 0, n, dtype);
    return floats;
  }

  /**
   * n float32 values (`floats`) and where the n stored values of `dtype` go (`stored`): for 16-bit values the
   * upper half, widened in place by widenRange, for F32 the values themselves.
   */
  stage(n: number, dtype: string): { floats: Float32Array; stored: Uint8Array } {
    const floats = this.floats(n);
    const bytes = new Uint8Array(floats.buffer, floats.byteOffset, 4 * n);
    return { floats, stored: dtype === 'F32' ? bytes : bytes.subarray(2 * n) };
  }

  /** `view` (from floats()) holds 16-bit values in its upper half: they become its float32 values. */
  widen(view: Float32Array, dtype: string): void {
    this.widenRange(view, 0, view.length, dtype);
  }

  /**
   * Values [from, to) of `view`'s 16-bit values (held in its upper half) become float32, in place; ranges in
   * order, as their stored bytes arrive. A no-op for F32.
   */
  widenRange(view: Float32Array, from: number, to: number, dtype: string): void {
    if (dtype === 'F32') return;
    if (this.wasm && (dtype === 'BF16' || dtype === 'F16')) this.wasm.widenRange(view.length, from, to, dtype);
    else widenRangeInPlace(view, from, to, dtype);
  }
}

/** Stored bytes read per chunk of a layer's weights (a multiple of 64: whole rounds of the widening kernels). */
export const LOAD_CHUNK_BYTES = 4 << 20;

/** Chunks of a layer read at once (libuv's pool has 4 threads). */
export const READS_AHEAD = 4;

interface LoadChunk {
  loc: LayerTensor['loc'];
  /** Bytes [begin, begin + into.length) of the tensor's stored bytes. */
  begin: number;
  into: Uint8Array;
  widen: () => void;
}

/**
 * One layer's weights at a time, as float32 in buffers by role, reused from layer to layer so that no layer pays
 * for fresh memory. Each tensor's stored bytes are read straight into its buffer (16-bit values into the upper
 * half) a chunk at a time, and each chunk is widened in place on this thread while libuv's pool reads the next ones
 * (`readsAhead` at once): the two overlap on two cores, where reading the next layer during a run took a core from
 * onnxruntime's threads. No staging copy is held (at Mistral-7B's shape 0.87 GB where one float32 set and staged bytes took
 * 1.3 GB), and the first layer's fresh pages fault in on both threads.
 */
export class LayerWeights {
  private readonly f32 = new Map<string, WeightBuffer>();

  /**
   * `chunkBytes`: stored bytes per read, a multiple of 64 (tests make it small, to split small tensors);
   * `readsAhead`: chunks being read at once, ahead of the one being widened.
   */
  constructor(private readonly chunkBytes = LOAD_CHUNK_BYTES, private readonly readsAhead = READS_AHEAD) {
    if (!(Number.isInteger(readsAhead) && readsAhead >= 1)) throw new RangeError(`${readsAhead} reads ahead: a whole number from 1 is needed`);
    if (chunkBytes <= 0 || chunkBytes % 64 !== 0) throw new RangeError(`chunk of ${chunkBytes} bytes: a positive multiple of 64 is needed`);
  }

  /** The layer's float32 feeds; `kernels` resolves once the widening kernels are compiled (awaited before the first widening). */
  async load(tensors: Map<string, LayerTensor>, kernels: Promise<void>): Promise<Record<string, Feed>> {
    const out: Record<string, Feed> = {};
    const chunks: LoadChunk[] = [];
    for (const t of tensors.values()) {
      let slot = this.f32.get(t.role);
      if (!slot) this.f32.set(t.role, (slot = new WeightBuffer()));
      const { dtype, byteLength } = t.loc;
      const width = dtype === 'F32' ? 4 : 2;
      const n = byteLength / width;
      const { floats, stored } = slot.stage(n, dtype);
      const s = slot;
      for (let begin = 0; begin < byteLength; begin += this.chunkBytes) {
        const end = Math.min(byteLength, begin + this.chunkBytes);
        chunks.push({ loc: t.loc, begin, into: stored.subarray(begin, end), widen: () => s.widenRange(floats, begin / width, end / width, dtype) });
      }
      out[weightInput(t.role)] = floatTensor(floats, t.loc.shape);
    }
    const files = new Map<string, FileHandle>();
    // Opened first: a read must reach libuv's pool before the widening that follows it blocks this thread.
    const read = (c: LoadChunk) => {
      const p = readFully(files.get(c.loc.file)!, c.into, c.loc.offset + c.begin, c.loc);
      p.catch(() => undefined); // a read ahead may fail before it is awaited: its error is taken when it is
      return p;
    };
    // Chunks read ahead of the widening, each into its own place (no memory more): from the page cache one would
    // do, but from the disk one read at a time left it mostly idle. Safe in place: a chunk's stored bytes lie above
    // every float widened before it (see widenInPlace).
    const pending: Promise<void>[] = [];
    try {
      for (const c of chunks) if (!files.has(c.loc.file)) files.set(c.loc.file, await open(c.loc.file, 'r'));
      let compiled = false;
      for (let i = 0; i < Math.min(this.readsAhead, chunks.length); i++) pending.push(read(chunks[i]!));
      for (let i = 0; i < chunks.length; i++) {
        await pending[i];
        if (i + this.readsAhead < chunks.length) pending.push(read(chunks[i + this.readsAhead]!));
        if (!compiled) {
          await kernels;
          compiled = true;
        }
        chunks[i]!.widen();
      }
    } finally {
      // No read may land in a buffer after it is handed on.
      await Promise.all(pending.map((p) => p.catch(() => undefined)));
      for (const fh of files.values()) await fh.close().catch(() => undefined);
    }
    return out;
  }
}

/** `into.length` bytes of `loc`'s file from `position`. */
async function readFully(fh: FileHandle, into: Uint8Array, position: number, loc: LayerTensor['loc']): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await fh.read(into, done, into.length - done, position + done);
    if (bytesRead === 0) throw new ForgeError('truncated', `file ended while reading ${loc.byteLength} bytes`, { file: loc.file, tensor: loc.name });
    done += bytesRead;
  }
}

/**
 * 16-bit values held in the upper half of `buf` become float32 in place. Going forward is safe: element i is
 * read (bytes 2n+2i) before its float lands at bytes 4i..4i+3, which lie below every value still to be read.
 */
export function widenInPlace(buf: Float32Array, dtype: string): void {
  widenRangeInPlace(buf, 0, buf.length, dtype);
}

/** Values [from, to) of widenInPlace, the ranges of a buffer in order (see WasmFloatBuffer.widenRange). */
function widenRangeInPlace(buf: Float32Array, from: number, to: number, dtype: string): void {
  const n = buf.length;
  const k = dtype === 'BF16' || dtype === 'F16' ? floatKernels() : null;
  if (k) {
    // The SIMD kernels (several times the loop below): each block's 16-bit source is copied out before its
    // floats land, and block [i, i+m) writes bytes below 4(i+m) <= 2n + 2(i+m), where unread values start.
    const bytes = new Uint8Array(buf.buffer, buf.byteOffset, 4 * n);
    castThrough(k, bytes.subarray(2 * n + 2 * from, 2 * n + 2 * to), dtype as 'BF16' | 'F16', 'F32', bytes.subarray(4 * from, 4 * to));
    return;
  }
  const src = new Uint16Array(buf.buffer, buf.byteOffset, 2 * n);
  const dst = new Uint32Array(buf.buffer, buf.byteOffset, n);
  if (dtype === 'BF16') {
    // Two values per 32-bit read (about 2.5x faster than one at a time): the low half is the earlier value.
    // Still safe in place: pair k is read (bytes 2n+4k..) before its floats land at bytes 8k..8k+7.
    let i = from;
    if ((n + i) % 2 === 1 && i < to) {
      dst[i] = src[n + i]! << 16; // then the pairs start 4-byte aligned
      i++;
    }
    const count = (to - i) >> 1;
    const pairs = new Uint32Array(buf.buffer, buf.byteOffset + 2 * (n + i), count);
    for (let k = 0; k < count; k++) {
      const w = pairs[k]!;
      dst[i + 2 * k] = w << 16;
      dst[i + 2 * k + 1] = w & 0xffff0000;
    }
    for (let j = i + 2 * count; j < to; j++) dst[j] = src[n + j]! << 16;
  } else if (dtype === 'F16') {
    const table = f16Widen();
    for (let i = from; i < to; i++) dst[i] = table[src[n + i]!]!;
  } else throw new Error(`internal: no widening for ${dtype}`);
}

let f16Table: Uint32Array | null = null;
/** float32 bits of every half-precision value, built once. */
function f16Widen(): Uint32Array {
  if (!f16Table) {
    const all = Uint16Array.from({ length: 65536 }, (_, h) => h);
    const f32 = convertBytes(Buffer.from(all.buffer), 'F16', 'F32');
    f16Table = new Uint32Array(f32.buffer, f32.byteOffset, 65536);
  }
  return f16Table;
}

/**
 * Symmetric 8-bit blocks of a [N, K] float32 weight along K, as MatMulNBits reads them with no zero points
 * (zero point 128): per block of `block` values, scale = max |w| / 127 and q = round(w / scale) + 128.
 */
export function quantizeInt8(w: Float32Array, N: number, K: number, block: number, q: Uint8Array, scales: Float32Array): void {
  const blocks = K / block;
  for (let r = 0; r < N; r++) {
    for (let c = 0; c < blocks; c++) {
      const at = r * K + c * block;
      let max = 0;
      for (let i = 0; i < block; i++) {
        const a = Math.abs(w[at + i]!);
        if (a > max) max = a;
      }
      const scale = max / 127;
      scales[r * blocks + c] = scale;
      const inv = scale === 0 ? 0 : 1 / scale;
      // floor(x + 128.5) = round(x) + 128 (halves up), the argument positive: `| 0` truncates it (2x Math.round's speed).
      for (let i = 0; i < block; i++) q[at + i] = (w[at + i]! * inv + 128.5) | 0;
    }
  }
}

/** The 2-D projections of a layer, which the int8 graph takes as 8-bit blocks. */
const isProjection = (t: LayerTensor) => t.loc.shape.length === 2;

/** Quantized projections by role, reused from layer to layer (onnxruntime copies them when it makes a session). */
type Int8Pool = Map<string, { q: Uint8Array; scales: Float32Array }>;

/**
 * One layer's int8 session inputs: each projection quantized from its float32 feed into `pool`, as external data;
 * the other weights (norms, biases) stay float32 feeds.
 */
function int8Layer(tensors: Map<string, LayerTensor>, feeds: Record<string, Feed>, pool: Int8Pool): { external: ExternalData; feeds: Record<string, Feed> } {
  const external: ExternalData = [];
  const rest: Record<string, Feed> = {};
  for (const t of tensors.values()) {
    const name = weightInput(t.role);
    if (!isProjection(t)) {
      rest[name] = feeds[name]!;
      continue;
    }
    const [N, K] = t.loc.shape as [number, number];
    if (K % 16 !== 0) throw new ModelError('int8_shape', `forwardPrecision int8 needs the input dimension ${K} to be a multiple of 16`, { file: t.loc.file, tensor: t.loc.name });
    const block = int8BlockSize(K);
    let slot = pool.get(t.role);
    if (!slot || slot.q.length !== N * K) pool.set(t.role, (slot = { q: new Uint8Array(N * K), scales: new Float32Array((N * K) / block) }));
    quantizeInt8(feeds[name]!.data as Float32Array, N, K, block, slot.q, slot.scales);
    external.push({ path: `${name}_q8`, data: slot.q }, { path: `${name}_scale`, data: new Uint8Array(slot.scales.buffer) });
  }
  return { external, feeds: rest };
}

/**
 * Prompts packed into runs of at most `budget` tokens (a longer prompt runs alone), shortest first, so that
 * the prompts of a run have similar lengths and their attention blocks little padding.
 */
export function packs(seqs: Sequence[], budget: number): number[][] {
  const order = seqs.map((_, i) => i).sort((a, b) => seqs[a]!.ids.length - seqs[b]!.ids.length || a - b);
  const out: number[][] = [];
  let cur: number[] = [], tokens = 0;
  for (const i of order) {
    const n = seqs[i]!.ids.length;
    if (cur.length > 0 && tokens + n > budget) {
      out.push(cur);
      cur = [];
      tokens = 0;
    }
    cur.push(i);
    tokens += n;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

type Feed = ReturnType<typeof floatTensor>;

/**
 * RoPE tables, attention blocks and gate of a pack: each prompt at positions 0..T-1, its attention in a block
 * of its own (C slots, C the pack's longest prompt), so it sees only itself.
 */
export function packInputs(cfg: ModelConfig, seqs: Sequence[]): Record<string, Feed> {
  const N = seqs.reduce((a, s) => a + s.ids.length, 0);
  const B = seqs.length, C = Math.max(...seqs.map((s) => s.ids.length));
  const D = cfg.headDim;
  const { cos, sin, gate } = packTables(cfg, seqs);
  const mask = new Float32Array(B * C * C).fill(-Infinity);
  const slots = new BigInt64Array(B * C); // padding slots read row 0; their outputs are never gathered back
  const rows = new BigInt64Array(N);
  let at = 0;
  for (const [b, s] of seqs.entries()) {
    const T = s.ids.length;
    // The pad state has no attention term; any finite mask keeps its (discarded) softmax finite.
    const own = s.attnGate ? attentionMask(T, cfg.slidingWindow) : new Float32Array(T * T);
    const block = b * C * C;
    for (let i = 0; i < T; i++) mask.set(own.subarray(i * T, (i + 1) * T), block + i * C);
    // A padding slot attends to itself only, so its softmax stays finite too.
    for (let i = T; i < C; i++) mask[block + i * C + i] = 0;
    for (let t = 0; t < T; t++) {
      slots[b * C + t] = BigInt(at + t);
      rows[at + t] = BigInt(b * C + t);
    }
    at += T;
  }
  return {
    [LAYER_INPUTS.cos]: floatTensor(cos, [N, D]),
    [LAYER_INPUTS.sin]: floatTensor(sin, [N, D]),
    [LAYER_INPUTS.mask]: floatTensor(mask, [B, C, C]),
    [LAYER_INPUTS.gate]: floatTensor(gate, [N, 1]),
    [LAYER_INPUTS.slots]: int64Tensor(slots, [B * C]),
    [LAYER_INPUTS.rows]: int64Tensor(rows, [N]),
  };
}

/**
 * A pack's tables as plain arrays (the native pass's attention takes them without onnxruntime): RoPE's cos and sin
 * [N, D] (per prompt: dynamic NTK scaling depends on its length), the attention gate per row (0 for the pad state)
 * and each prompt's [start, length] rows.
 */
export function packTables(cfg: ModelConfig, seqs: Sequence[]): PackTables {
  const N = seqs.reduce((a, s) => a + s.ids.length, 0);
  const D = cfg.headDim;
  const cos = new Float32Array(N * D), sin = new Float32Array(N * D), gate = new Float32Array(N), segs = new Int32Array(2 * seqs.length);
  let at = 0;
  for (const [b, s] of seqs.entries()) {
    const T = s.ids.length;
    const r = ropeTables(cfg, T);
    cos.set(r.cos, at * D);
    sin.set(r.sin, at * D);
    gate.fill(s.attnGate, at, at + T);
    segs[2 * b] = at;
    segs[2 * b + 1] = T;
    at += T;
  }
  return { cos, sin, gate, segs };
}

/**
 * What a pass sets up before its first layer runs: every layer's tensors checked, the first layer's load
 * started, the widening kernels compiling, the sessions made once per layer shape. Made by prepareForward
 * ahead of the prompts (in a worker started early), or by runLayers itself.
 */
interface Setup {
  layers: Map<string, LayerTensor>[];
  /** Each layer's runs (layerPhases): the whole layer, or its attention and its MLP's pieces. */
  phases: LayerPhase[][];
  weights: LayerWeights;
  /** A phase's load into the weight buffers, started ahead (the first layer's first; null once taken). */
  loading: { layer: number; phase: number; feeds: Promise<Record<string, Feed>> } | null;
  kernels: Promise<void>;
  sessions: Map<string, Promise<Session>>;
  /** Native projections (bf16, or fp32 wide): their stream, its first pieces' reads started ahead (prepareForward). */
  stream?: WeightStream;
}

/** Names, dtypes and shapes of every layer, checked before any layer runs. */
const planLayers = (m: Model) => Array.from({ length: m.cfg.numLayers }, (_, l) => planLayerTensors(m.cfg, m.weights, l));

/**
 * Which pass runs its projections in the native kernels: bf16's always; fp32's (wide) where the CPU runs that
 * kernel and every projection is stored bf16, or every one float16 (wideDtype; the measured edit: no fresh float32
 * copy of a layer to fault in, the weights read at half the bytes); null: onnxruntime runs the whole layer.
 */
function nativeArithmetic(layers: Map<string, LayerTensor>[], opts: ForwardOptions): NativeArithmetic | null {
  const precision = opts.precision ?? 'fp32';
  if (precision === 'bf16') return 'bf16';
  if (precision !== 'fp32' || (opts.device ?? 'cpu') !== 'cpu' || !wideAvailable()) return null;
  return wideDtype(layers) ? 'wide' : null;
}

/** The MLP bytes a pass holds at a time: the int8 path quantizes whole layers. */
const mlpBytesOf = (opts: ForwardOptions) => ((opts.precision ?? 'fp32') === 'int8' ? Infinity : opts.mlpBytes ?? MLP_PIECE_BYTES);

/** `load`: the first layer's first load started now (loadFirst). */
function setUp(m: Model, layers: Map<string, LayerTensor>[], opts: ForwardOptions, load = true): Setup {
  const mlp = mlpBytesOf(opts);
  // The kernels compile off this thread while the reads run (once per process).
  const su: Setup = { layers, phases: layers.map((l) => layerPhases(l, mlp)), weights: new LayerWeights(), loading: null, kernels: WasmFloatBuffer.prepare(), sessions: new Map() };
  if (load) loadFirst(su);
  return su;
}

/** The first layer's first run's weights, loading from now on (none where the model has no layers). */
function loadFirst(su: Setup): void {
  const first = su.phases[0]?.[0];
  if (!first) return;
  const feeds = su.weights.load(first.tensors, su.kernels);
  feeds.catch(() => undefined); // awaited by the layer that needs it; a failure before then must not go unhandled
  su.loading = { layer: 0, phase: 0, feeds };
}

/** Phase `phase` of layer `layer`'s weights as feeds (the buffers hold one phase's roles: earlier feeds of those roles are spent). */
async function nextFeeds(su: Setup, layer: number, phase: number): Promise<Record<string, Feed>> {
  const ahead = su.loading;
  su.loading = null;
  if (ahead?.layer === layer && ahead.phase === phase) return ahead.feeds;
  await ahead?.feeds.catch(() => undefined); // its reads land in the same buffers
  return su.weights.load(su.phases[layer]![phase]!.tensors, su.kernels);
}

/** The float32 session for a phase's kind and shapes, made once per setup. */
function phaseSession(setup: Setup, cfg: ModelConfig, phase: LayerPhase, opts: ForwardOptions): Promise<Session> {
  const key = `${phase.kind}:${layerSignature(phase.tensors)}`;
  let s = setup.sessions.get(key);
  if (!s) {
    const model =
      phase.kind === 'whole' ? buildLayerModel(cfg, phase.tensors, { routerInput: opts.routerInput })
      : phase.kind === 'attention' ? buildLayerModel(cfg, phase.tensors, { attentionOnly: true })
      : phase.kind === 'up' ? mlpUpModel(phase.tensors)
      : mlpDownModel(phase.tensors);
    s = sessionFromBytes(encodeModel(model), { device: opts.device ?? 'cpu', threads: opts.threads ?? 2 });
    s.catch(() => undefined); // awaited by the layer that needs it
    setup.sessions.set(key, s);
  }
  return s;
}

async function releaseSetup(setup: Setup): Promise<void> {
  await setup.stream?.close();
  for (const s of setup.sessions.values()) await s.then((x) => x.release(), () => undefined);
}

/** Float32 bytes of a layer's weights. */
export const layerFloatBytes = (layer: Map<string, LayerTensor>) => [...layer.values()].reduce((a, t) => a + 4 * t.loc.shape.reduce((x, y) => x * y, 1), 0);

/** Largest layer (float32 bytes) whose memory a pass set up ahead takes before it knows it will run. */
export const EAGER_LAYER_BYTES = 512 << 20;

/**
 * The folders a pass reads, as they are now (util/stat-key's folderKeys), and whether one cannot be vouched for
 * later: a file written too recently, or a folder that cannot be listed.
 */
function folderState(dirs: string[]): { keys: string; racy: boolean } {
  const at = nowNs();
  const seen = dirs.map((d) => folderKeys(d, at));
  return { keys: JSON.stringify(seen.map((f) => f && [f.names, f.files])), racy: seen.some((f) => f === null || f.racy) };
}

/** The folders a pass over `modelDir` with `opts` reads. */
const passDirs = (modelDir: string, opts: ForwardOptions) => (opts.mlpFrom ? [modelDir, opts.mlpFrom] : [modelDir]);

/** A pass set up ahead, with its model's folders as they were when the setup began. */
type Ahead = { m: Model; setup: Setup; files: { keys: string; racy: boolean } };

/** A pass set up ahead of its prompts (or being set up), and what it was set up for. */
let ahead: { key: string; ready: Promise<Ahead | null> } | null = null;

/** Which pass: the model and the options that change its states, defaults spelt out (a pass set up ahead, a speculated one). */
export const passKey = (modelDir: string, opts: ForwardOptions) =>
  JSON.stringify([modelDir, opts.mlpFrom ?? null, opts.routerInput === true, opts.device ?? 'cpu', opts.threads ?? 2, opts.precision ?? 'fp32', mlpBytesOf(opts)]);

/**
 * Sets up the next pass over `modelDir` before its prompts are known (the model opened and checked, the first
 * layer read, its session made): a later computePromptStates / computeRouterInputs / computePadStates with the
 * same model and options starts from it. Whatever fails here is left for that call to meet and report.
 * `eagerLayerBytes`: the largest first layer (float32 bytes) read and widened now. Asked again for the pass that
 * is set up (or being set up) already, it joins that one: false; true when it started a setup.
 */
export function prepareForward(modelDir: string, opts: ForwardOptions = {}, eagerLayerBytes = EAGER_LAYER_BYTES): Promise<boolean> {
  const key = passKey(modelDir, opts);
  if (ahead?.key === key) return ahead.ready.then(() => false);
  const old = ahead;
  ahead = { key, ready: setUpAhead(old, modelDir, opts, eagerLayerBytes) };
  return ahead.ready.then(() => true);
}

async function setUpAhead(old: typeof ahead, modelDir: string, opts: ForwardOptions, eagerLayerBytes: number): Promise<Ahead | null> {
  const was = await old?.ready;
  if (was) await releaseSetup(was.setup);
  try {
    executionProviders(opts.device ?? 'cpu');
    // Before anything is read: a file replaced or rewritten from here on is caught when the pass comes (takeAhead).
    const files = folderState(passDirs(modelDir, opts));
    const m = await openModel(modelDir, opts.mlpFrom);
    const layers = planLayers(m);
    // The pass may not come (every state cached): its first layer's memory is taken ahead only where that is
    // small (fresh pages are slow on a VM, and a 7B layer holds 0.87 GB); otherwise the model is checked and the
    // session made.
    const setup = setUp(m, layers, opts, false);
    const first = setup.phases[0]?.[0];
    // Eager: the first run's weights read and widened now, their pages faulted in while the prompts are read.
    const precision = opts.precision ?? 'fp32';
    const native = nativeArithmetic(layers, opts);
    if (first && !native && layerFloatBytes(first.tensors) <= eagerLayerBytes) loadFirst(setup);
    if (first && !native && precision === 'fp32') void phaseSession(setup, m.cfg, first, opts);
    // Native projections: the first layer's projections read now (a watched bf16 edit's pass then starts with
    // them: 0.88-1.03 s against 0.99-1.19 on the bench's medium model, its first layer 150 ms otherwise). Their
    // attention is native too: nothing of onnxruntime is loaded.
    if (layers[0] && native && (native === 'wide' || bf16Unavailable() === null)) {
      setup.stream = new WeightStream(layers, native === 'wide');
      setup.stream.begin();
      aheadStats.bf16Reads++;
    }
    return { m, setup, files };
  } catch {
    return null; // the call that needs the pass meets the same error and reports it
  }
}

/** A byte range of a file, as a tensor's location gives it. */
export type FileRange = { file: string; offset: number; byteLength: number };

/**
 * Reads `ranges` a chunk at a time into one scratch buffer and drops what it read: the files' pages are then in
 * the OS's cache for a pass to come (Node has no fadvise). Stops before the next chunk once `stop()` is true;
 * a file that cannot be read ends it too (warming is only a head start). Returns the bytes read.
 */
export async function warmRanges(ranges: FileRange[], stop: () => boolean, chunkBytes = LOAD_CHUNK_BYTES): Promise<number> {
  const buf = Buffer.allocUnsafe(chunkBytes);
  const handles = new Map<string, FileHandle>();
  let bytes = 0;
  try {
    for (const r of ranges) {
      for (let at = 0; at < r.byteLength; at += chunkBytes) {
        if (stop()) return bytes;
        let fh = handles.get(r.file);
        if (!fh) handles.set(r.file, (fh = await open(r.file, 'r')));
        const n = Math.min(chunkBytes, r.byteLength - at);
        const { bytesRead } = await fh.read(buf, 0, n, r.offset + at);
        bytes += bytesRead;
        if (bytesRead < n) break;
      }
    }
  } catch {
    // a file gone or unreadable: the pass meets it and reports it
  } finally {
    for (const fh of handles.values()) await fh.close().catch(() => undefined);
  }
  return bytes;
}

/**
 * The layers after the first of the pass set up ahead (prepareForward), read into the OS's page cache while no
 * pass runs (a watched recipe's worker, between builds: another program's reads or a large write may have pushed
 * the model out, and a pass would then wait on the disk). Stops once `stop()` is true. Returns the bytes read.
 */
export async function warmAhead(stop: () => boolean): Promise<number> {
  const got = await ahead?.ready;
  if (!got || stop()) return 0;
  return warmRanges(got.setup.layers.slice(1).flatMap((l) => [...l.values()].map((t) => t.loc)), stop);
}

/**
 * The pass set up ahead for these options, once (null when there is none, it was for others, or a file of its
 * model's folders changed since it began: its tensor index and first layer would be the old files'; a watched
 * recipe's worker may wait for hours while the model is downloaded again or saved over).
 */
async function takeAhead(modelDir: string, opts: ForwardOptions): Promise<{ m: Model; setup: Setup } | null> {
  const a = ahead;
  ahead = null;
  const got = await a?.ready;
  if (!a || !got) return null;
  if (a.key === passKey(modelDir, opts) && !got.files.racy && sameFiles(got.files.keys, passDirs(modelDir, opts))) {
    aheadStats.taken++;
    return got;
  }
  aheadStats.passedOver++;
  void releaseSetup(got.setup);
  return null;
}

/**
 * Passes set up ahead in this process: taken by a pass, or passed over (other options, files changed), and bf16
 * first layers whose reads a setup started (tests read this).
 */
export const aheadStats = { taken: 0, passedOver: 0, bf16Reads: 0 };

/** Passes run in this process, by what ran their projections (tests read this). */
export const passStats = { onnxruntime: 0, wide: 0, bf16: 0 };

const sameFiles = (keys: string, dirs: string[]) => folderState(dirs).keys === keys;

/** The model at `modelDir`, and its pass's setup when one was made ahead for these options. */
async function modelFor(modelDir: string, opts: ForwardOptions): Promise<{ m: Model; setup?: Setup }> {
  const a = await takeAhead(modelDir, opts);
  return a ?? { m: await openModel(modelDir, opts.mlpFrom) };
}

/** A result tensor's values copied out of onnxruntime's buffer, the native tensor freed now rather than at GC. */
function takeData(t: { data: unknown; dispose(): void }): Float32Array {
  const d = (t.data as Float32Array).slice();
  t.dispose();
  return d;
}

/** One run of a whole-layer graph: its output, and its router input where asked. */
async function runWhole(session: Session, feeds: Record<string, Feed>, routerInput: boolean): Promise<[Float32Array, Float32Array | null]> {
  const r = await session.run(feeds);
  return [takeData(r[LAYER_OUTPUT]!), routerInput ? takeData(r[ROUTER_INPUT]!) : null];
}

/**
 * Runs the sequences layer by layer: one session per distinct layer shape (the weights are inputs), every
 * pack of prompts through it in one run each, each layer's weights loaded into the same buffers before it runs
 * (LayerWeights: one layer's float32 weights are held), and nothing is written beside the model.
 * Calls `visit` for entries 0..upTo. `visitCopies`: the visitor copies what it keeps of the arrays it is given,
 * so a native pass writes each layer's input pack and output into arrays kept for the pass (rewritten by the next
 * layer) instead of fresh ones: a 7B pass's fresh 3.6 MB a layer cost its JavaScript thread ~0.2 s of page faults,
 * the kernels' threads waiting on it.
 */
async function runLayers(m: Model, given: Sequence[], upTo: number, opts: ForwardOptions, visit: Visit, ready?: Setup, visitCopies = false): Promise<void> {
  const { cfg } = m;
  const H = cfg.hiddenSize;
  let setup = ready;
  try {
    executionProviders(opts.device ?? 'cpu'); // an unavailable device fails before any weight is read
    const bf16 = (opts.precision ?? 'fp32') === 'bf16';
    if (bf16) requireBf16(); // before any weight is read, as the device
    if (upTo < 0 || upTo > cfg.numLayers) throw new RangeError(`upTo ${upTo} outside 0..${cfg.numLayers}`);
    for (const [i, s] of given.entries()) {
      if (s.ids.length === 0) throw new ForgeError('empty_prompt', `prompt ${i} has no tokens`, { field: `prompts[${i}]` });
    }
    if (given.length === 0) return;
    const groups = packs(given, Math.max(1, opts.packTokens ?? 2048));
    // A run of one token takes onnxruntime's one-row matmul, whose sums round apart from every other run's: such a
    // run gets a twin of its token (its output dropped), so a prompt's states are the same alone or packed.
    const seqs = [...given];
    for (const g of groups) if (g.length === 1 && seqs[g[0]!]!.ids.length === 1) g.push(seqs.push(seqs[g[0]!]!) - 1);
    const planned = setup?.layers ?? planLayers(m); // before any read
    // The embedding rows are read first: queued behind a layer's reads in libuv's pool, they would wait for them.
    const rows = await embedRows(m, given.flatMap((s) => s.ids));
    let states: Float32Array[] = seqs.map((s) => {
      const h = new Float32Array(s.ids.length * H);
      s.ids.forEach((id, t) => h.set(rows.get(id)!, t * H));
      return h;
    });
    for (let i = 0; i < given.length; i++) visit(i, 0, states[i]!);
    if (upTo === 0) return;
    // Then the first layer's load; the first session is made and the kernels are compiled while it runs.
    const native = nativeArithmetic(planned, opts);
    passStats[native ?? 'onnxruntime']++;
    setup ??= setUp(m, planned, opts, !native); // native projections read their own way (WeightStream)
    const su = setup;
    const { layers } = su;
    const settings: SessionSettings = { device: opts.device ?? 'cpu', threads: opts.threads ?? 2 };
    // The native pass's attention takes plain arrays: onnxruntime is not loaded for it.
    const tables = native ? groups.map((g) => packTables(cfg, g.map((i) => seqs[i]!))) : [];
    const fixed = native ? [] : groups.map((g) => packInputs(cfg, g.map((i) => seqs[i]!)));
    const int8 = (opts.precision ?? 'fp32') === 'int8';
    const int8Pool: Int8Pool = new Map();
    // Native: the projections stream through a few buffers, piece by piece, in the order the layers take them.
    const stream = native ? (su.stream ??= new WeightStream(layers, native === 'wide')) : null;
    const f16 = native === 'wide' && wideDtype(layers) === 'F16';
    stream?.stopAt(upTo);
    stream?.begin();
    const arrays = new PassArrays();
    for (let layer = 0; layer < upTo; layer++) {
      const out: Float32Array[] = new Array(seqs.length);
      const routerIn: Float32Array[] = new Array(seqs.length);
      // Per pack: its [N, H] output and router input, split per prompt once the layer is done.
      const packOut: Float32Array[] = new Array(groups.length);
      const packRouter: (Float32Array | null)[] = new Array(groups.length).fill(null);
      // A pack's inputs to the layer's first run.
      const inputs = (g: number) => {
        const { N, hidden } = packStates(seqs, groups[g]!, states, H);
        return { ...fixed[g]!, [LAYER_INPUTS.hidden]: floatTensor(hidden, [N, H]) };
      };
      const phases = su.phases[layer]!;
      if (int8) {
        // A session per layer: MatMulNBits packs its constant blocks when the session is made.
        const q = int8Layer(layers[layer]!, await nextFeeds(su, layer, 0), int8Pool);
        // No arena: a session that serves one layer would fault in a fresh one each time (measured slower).
        const session = await sessionFromBytes(encodeModel(buildLayerModel(cfg, layers[layer]!, { routerInput: opts.routerInput, int8: true })), { ...settings, arena: false }, q.external);
        try {
          for (const g of groups.keys()) [packOut[g], packRouter[g]] = await runWhole(session, { ...q.feeds, ...inputs(g) }, opts.routerInput === true);
        } finally {
          await session.release();
        }
      } else if (native) {
        const packs = groups.map((g, i) => ({ x: packStates(seqs, g, states, H, visitCopies ? (n) => arrays.get(`x${i}`, n) : undefined).hidden, tables: tables[i]! }));
        const r = await runBf16Layer(cfg, stream!, layer, packs, { threads: settings.threads, arithmetic: native, f16, arrays, reuse: visitCopies && !opts.routerInput });
        for (const g of groups.keys()) {
          packOut[g] = r[g]!.out;
          if (opts.routerInput) packRouter[g] = r[g]!.routerInput;
        }
      } else if (phases[0]!.kind === 'whole') {
        const session = await phaseSession(su, cfg, phases[0]!, opts);
        const weights = await nextFeeds(su, layer, 0);
        for (const g of groups.keys()) [packOut[g], packRouter[g]] = await runWhole(session, { ...weights, ...inputs(g) }, opts.routerInput === true);
      } else {
        // Attention (the residual stream after it, and the router input), then the MLP a piece at a time.
        const attention = await phaseSession(su, cfg, phases[0]!, opts);
        const weights = await nextFeeds(su, layer, 0);
        const mid: Float32Array[] = [];
        const normed: Float32Array[] = [];
        for (const g of groups.keys()) {
          const r = await attention.run({ ...weights, ...inputs(g) });
          mid[g] = takeData(r[ATTN_OUTPUT]!);
          normed[g] = takeData(r[ROUTER_INPUT]!);
          if (opts.routerInput) packRouter[g] = normed[g]!;
        }
        const I = cfg.intermediateSize;
        const act = groups.map((_, g) => new Float32Array((normed[g]!.length / H) * I));
        for (let p = 1; p < phases.length; p++) {
          const phase = phases[p]!;
          const session = await phaseSession(su, cfg, phase, opts);
          const w = await nextFeeds(su, layer, p);
          for (const g of groups.keys()) {
            const N = normed[g]!.length / H;
            if (phase.kind === 'up') {
              // Channels [c0, c1) of the activation, into their columns of the whole one.
              const piece = takeData((await session.run({ ...w, [MLP_IO.normed]: floatTensor(normed[g]!, [N, H]) }))[MLP_IO.actOut]!);
              const C = phase.c1 - phase.c0;
              for (let t = 0; t < N; t++) act[g]!.set(piece.subarray(t * C, (t + 1) * C), t * I + phase.c0);
            } else if (phase.kind === 'down') {
              // Rows [r0, r1) of down_proj give those columns of the MLP's output: the residual added there.
              const piece = takeData((await session.run({ ...w, [MLP_IO.act]: floatTensor(act[g]!, [N, I]) }))[MLP_IO.downOut]!);
              const R = phase.r1 - phase.r0;
              const h = mid[g]!;
              for (let t = 0; t < N; t++) for (let j = 0; j < R; j++) h[t * H + phase.r0 + j] = h[t * H + phase.r0 + j]! + piece[t * R + j]!;
            }
          }
        }
        for (const g of groups.keys()) packOut[g] = mid[g]!;
      }
      let done = 0;
      for (const [g, members] of groups.entries()) {
        let at = 0;
        for (const i of members) {
          const T = seqs[i]!.ids.length;
          // Views of the pack's own copy (takeData): each prompt's rows, no second copy.
          out[i] = packOut[g]!.subarray(at * H, (at + T) * H);
          if (opts.routerInput) routerIn[i] = packRouter[g]!.subarray(at * H, (at + T) * H);
          at += T;
        }
        const own = members.filter((i) => i < given.length);
        for (const i of own) visit(i, layer + 1, out[i]!, routerIn[i]);
        done += own.length;
        opts.onProgress?.({ layer, layers: upTo, promptsDone: done, prompts: given.length });
      }
      states = out;
    }
  } finally {
    if (setup) await releaseSetup(setup);
  }
}

function checkPrompts(prompts: number[][]): void {
  if (!Array.isArray(prompts)) throw new ForgeError('bad_prompts', 'prompts must be an array of token id arrays');
}

/**
 * Per prompt (token ids, each at positions 0..T-1, no padding; prompts are packed but never see each other) and per layer input
 * l = 0..L-1 (0 = embeddings, l = output of layer l-1): the last token's state, the sum over tokens,
 * and the token count. The last layer itself never runs: the reference drops its output.
 */
export async function computePromptStates(modelDir: string, prompts: number[][], opts: ForwardOptions = {}): Promise<LayerState[][]> {
  checkPrompts(prompts);
  const { m, setup } = await modelFor(modelDir, opts);
  const L = m.cfg.numLayers, H = m.cfg.hiddenSize;
  const result: LayerState[][] = prompts.map(() => new Array<LayerState>(L));
  await runLayers(m, prompts.map((ids) => ({ ids, attnGate: 1 })), L - 1, opts, (i, entry, h) => {
    const T = h.length / H;
    const sum = new Float64Array(H);
    for (let t = 0; t < T; t++) for (let j = 0; j < H; j++) sum[j]! += h[t * H + j]!;
    result[i]![entry] = { last: h.slice((T - 1) * H), sum: Float32Array.from(sum), count: T };
  }, setup, true); // its visitor copies (slice, from)
  return result;
}

/**
 * Per prompt and per layer 0..L-1, every token's router input: the post-attention RMSNorm output of the dense
 * layer, [prompt][layer] = Float32Array(T * H). Every layer runs (the last one's router needs its attention).
 */
export async function computeRouterInputs(modelDir: string, prompts: number[][], opts: ForwardOptions = {}): Promise<Float32Array[][]> {
  checkPrompts(prompts);
  const o = { ...opts, routerInput: true };
  const { m, setup } = await modelFor(modelDir, o);
  const L = m.cfg.numLayers;
  const out: Float32Array[][] = prompts.map(() => new Array<Float32Array>(L));
  await runLayers(m, prompts.map((ids) => ({ ids, attnGate: 1 })), L, o, (i, entry, _h, routerIn) => {
    if (entry > 0) out[i]![entry - 1] = routerIn!;
  }, setup);
  return out;
}

/**
 * The state of a left-pad position at each layer input 0..L-1, as the reference's sdpa attention
 * leaves it: h(0) = embed(pad), h(l+1) = h(l) + mlp_l(post_attention_layernorm_l(h(l))).
 */
export async function computePadStates(modelDir: string, padTokenId: number, opts: ForwardOptions = {}): Promise<Float32Array[]> {
  const { m, setup } = await modelFor(modelDir, opts);
  const out: Float32Array[] = new Array(m.cfg.numLayers);
  await runLayers(m, [{ ids: [padTokenId], attnGate: 0 }], m.cfg.numLayers - 1, opts, (_i, entry, h) => {
    out[entry] = h;
  }, setup);
  return out;
}

/**
 * Every position's state for all L+1 entries, as transformers' output_hidden_states gives them:
 * [prompt][entry] = Float32Array(T * H), entry L after the final norm (model.norm.weight).
 */
export async function computeAllHiddenStates(modelDir: string, prompts: number[][], opts: ForwardOptions = {}): Promise<Float32Array[][]> {
  checkPrompts(prompts);
  const m = await openModel(modelDir);
  const L = m.cfg.numLayers, H = m.cfg.hiddenSize;
  const normLoc = m.weights.get('model.norm.weight');
  checkTensor(normLoc, [H]);
  const normW = decodeFloats(await readTensorBytes(normLoc), normLoc.dtype);
  const out: Float32Array[][] = prompts.map(() => new Array<Float32Array>(L + 1));
  await runLayers(m, prompts.map((ids) => ({ ids, attnGate: 1 })), L, opts, (i, entry, h) => {
    out[i]![entry] = entry === L ? rmsNormRows(h, normW, m.cfg.rmsNormEps) : h;
  });
  return out;
}

/** RMSNorm of each row of h [rows, H] (sums in float64). */
function rmsNormRows(h: Float32Array, w: Float32Array, eps: number): Float32Array {
  const H = w.length, out = new Float32Array(h.length);
  for (let r = 0; r < h.length / H; r++) {
    let ss = 0;
    for (let j = 0; j < H; j++) ss += h[r * H + j]! ** 2;
    const inv = 1 / Math.sqrt(ss / H + eps);
    for (let j = 0; j < H; j++) out[r * H + j] = h[r * H + j]! * inv * w[j]!;
  }
  return out;
}
