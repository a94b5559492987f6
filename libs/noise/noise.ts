import { createHash } from 'node:crypto';
import { LargeNormalStream, Mt19937, normalsNative, TorchGenerator, wordsOf, TORCH_SMALL_NORMAL, type TorchRngState } from '../gates';
import { bf16BitsToF32, decodeFloats, dtypeSize, encodeFloats, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type FloatDtype } from '../safetensors';
import { floatKernels, FLOAT_CAP, scaleThrough } from '../safetensors';
import type { ArchContext, OutputArchitecture } from '../architectures';
import type { PlanTensor, SourcePart } from '../plan';
import { GATE_MODES, type GateMode } from '../gates';
import { normalsAhead, NORMALS_AHEAD_BATCH, type NormalsAhead } from './normals-ahead';

/**
 * Expert noise behind one interface, chosen by the `rng` option: our per-tensor streams, or
 * PyTorch's generator at the state the reference reaches when it draws that tensor.
 */

function roundTo(dtype: string, x: number): number {
  if (dtype === 'BF16') return bf16BitsToF32(f32ToBf16Bits(x));
  if (dtype === 'F16') return f16BitsToF32(f32ToF16Bits(x));
  return Math.fround(x);
}

/** The generator state after one draw of the reference, from the state before it. */
export function advanceTorchState(seed: number, state: TorchRngState, fn: 'randn' | 'rand', n: number, dtype: FloatDtype): TorchRngState {
  if (fn === 'randn' && n < TORCH_SMALL_NORMAL && n > 0) {
    // The small path's cached normal is a value: draw it (a few words).
    const g = new TorchGenerator(seed);
    g.mt.skip(state.offset);
    g.cachedNormal = state.cachedNormal;
    g.randn(n, dtype);
    return g.state();
  }
  return { offset: state.offset + wordsOf(fn, n, dtype, state.cachedNormal !== null).words, cachedNormal: state.cachedNormal };
}

/** The state after the reference's router draw (its first draw), or the seed's state without one. */
export function torchStateAfterGates(seed: number, gateMode: GateMode, gateValues: number): TorchRngState {
  const start: TorchRngState = { offset: 0, cachedNormal: null };
  const draw = GATE_MODES[gateMode].random;
  return draw ? advanceTorchState(seed, start, draw, gateValues, 'F32') : start;
}

/**
 * rng torch: gives every noised expert tensor of the plan the generator state at which the reference
 * draws its `randn_like` (in the source dtype), walking the tensors in the reference's draw order.
 */
export function assignTorchNoise(ctx: ArchContext, arch: OutputArchitecture, tensors: PlanTensor[], after: TorchRngState): void {
  const byStream = new Map<string, SourcePart>();
  for (const t of tensors) for (const p of t.parts) if (p.kind === 'source' && p.noise) byStream.set(p.noise.stream, p);
  const order: string[] = [];
  const { perExpert, projs } = arch.noiseDrawOrder;
  const experts = [...ctx.experts, ...ctx.shared];
  for (let l = 0; l < ctx.base.config.numLayers; l++) {
    if (perExpert) {
      for (const ex of experts) for (const proj of projs) order.push(`noise/${ex.shared ? 'shared' : 'expert'}/${ex.index}/${l}/${proj}`);
    } else {
      for (const proj of projs) for (const ex of experts) order.push(`noise/${ex.shared ? 'shared' : 'expert'}/${ex.index}/${l}/${proj}`);
    }
  }
  let state = after;
  for (const stream of order) {
    const p = byStream.get(stream);
    if (!p?.noise) continue;
    byStream.delete(stream);
    p.noise.torch = { ...state };
    const n = p.shape.reduce((a, b) => a * b, 1);
    // A float64 source's draw is counted as a 16-bit dtype's (as it always was; write noises it in float32).
    state = advanceTorchState(ctx.seed, state, 'randn', n, p.dtype === 'F64' ? 'BF16' : p.dtype);
  }
  if (byStream.size > 0) throw new Error(`internal: noised tensors outside the reference's draw order: ${[...byStream.keys()].join(', ')}`);
}

/**
 * Positions PyTorch's generator at planned states. Writing in another order than the reference draws
 * (the classic layout, kept shards) seeks back to the nearest saved state and skips forward.
 */
export class TorchDrawSeeker {
  /** Generators handed out, newest last: each draws from its own copy (shards are written two at a time). */
  private readonly lent: Mt19937[] = [];
  private readonly saved: Mt19937[] = [];

  constructor(private readonly seed: number) {}

  at(state: TorchRngState): TorchGenerator {
    // Start from the nearest position at or before the state: one saved, or where a generator handed out has got to.
    const from = [...this.saved, ...this.lent].filter((s) => s.offset <= state.offset).reduce<Mt19937 | null>((a, s) => (!a || s.offset > a.offset ? s : a), null);
    const mt = from ? from.clone() : new Mt19937(this.seed);
    mt.skip(state.offset - mt.offset);
    if (!this.saved.some((s) => s.offset === mt.offset)) this.saved.push(mt.clone());
    this.lent.push(mt);
    if (this.lent.length > 4) this.lent.shift();
    const g = new TorchGenerator(this.seed);
    g.mt = mt;
    g.cachedNormal = state.cachedNormal;
    return g;
  }
}

/** Reads a tensor's unit normals front to back, as float32 values before any cast to the tensor's dtype. */
interface NormalSource {
  read(out: Float32Array): void;
  /** Where the generator's kernel left them (see LargeNormalStream.span); absent: read() into the kernels' norm. */
  span?(max: number, spare: Float32Array, spareAddress: number): { address: number; count: number };
}

/**
 * The default noise (rng `stream`): one stream per tensor, an mt19937 seeded from sha256(seed, stream label)
 * feeding the float32 Box-Muller kernel of the torch generator (16 words a block, in order). Integer state
 * and the kernel's exactly rounded float32 steps give the same values on every machine, WebAssembly or not.
 */
export function streamNormals(seed: number | bigint | string, stream: string, n: number): NormalSource {
  // A whole number of blocks (no torch-style tail): chunks of any size read the same values.
  const draws = new LargeNormalStream(streamEngine(seed, stream), Math.max(16, Math.ceil(n / 16) * 16), 'F32');
  return { read: (out) => draws.readRaw(out), span: (max, spare, at) => draws.span(max, spare, at) };
}

/**
 * The engine streamNormals draws from, at its start: value v of the stream is computed from words 16⌊v/16⌋ to
 * 16⌊v/16⌋ + 15 alone, so a thread that skips to a block's words draws the values from there on.
 */
export function streamEngine(seed: number | bigint | string, stream: string): Mt19937 {
  const h = createHash('sha256').update(`moe-forge-noise\0${String(seed)}\0${stream}`).digest();
  const words = Array.from({ length: 8 }, (_, i) => h.readUInt32LE(i * 4));
  const mt = new Mt19937(words[0]!);
  mt.mix(words.slice(1));
  return mt;
}

/** Adds a tensor's noise to its values chunk by chunk (front to back). */
export interface NoiseApplier {
  /**
   * Raw little-endian bytes of the tensor's dtype in, the noised bytes (same dtype) out; `inPlace`: into src
   * itself (no new buffer to allocate and fault in), for a caller that owns src and is done with it.
   */
  applyBytes(src: Uint8Array, inPlace?: boolean): Buffer;
  /** The same on float32 values that hold values of the dtype. */
  apply(values: Float32Array): void;
  /** Done with the tensor (every value noised, or abandoned): frees the generator thread it may hold. */
  close(): void;
  /**
   * Resolves once the next `values` values' noise is generated (by the generator thread, when it has the tensor):
   * applyBytes on them then does not block. At most `batch` values at a time.
   */
  ready(values: number): Promise<void>;
  readonly batch: number;
}

/**
 * One noise applier per source part; `seeker` is shared by the parts of one write; `threads`: the most generator
 * threads for the default noise (fewer while a forward pass needs the cores). Both generators add
 * noise as the reference does, W + randn_like(W) * noise_scale with each op in W's dtype: the normal cast to
 * the dtype, times the scale in float32 rounded to the dtype, plus W rounded to the dtype.
 */
export function noiseApplier(part: SourcePart, seeker: () => TorchDrawSeeker, threads?: number): NoiseApplier | null {
  const noise = part.noise;
  if (!noise) return null;
  const dtype = part.dtype;
  if (dtype === 'F64') throw new Error(`internal: noise on a ${part.dtype} tensor`);
  const scale = Math.fround(noise.scale);
  const n = part.shape.reduce((a, b) => a * b, 1);
  let normals: NormalSource;
  let ahead: NormalsAhead | null = null;
  if (!noise.torch) normals = (ahead = normalsAhead(noise.seed, noise.stream, n, threads)) ?? streamNormals(noise.seed, noise.stream, n);
  else {
    const gen = seeker().at(noise.torch);
    if (n >= TORCH_SMALL_NORMAL) {
      // Unrounded: the noise kernel casts them to the dtype.
      const stream = gen.randnStream(n, dtype);
      normals = { read: (out) => stream.readRaw(out), span: (max, spare, at) => stream.span(max, spare, at) };
    }
    else {
      // Already rounded to the dtype; rounding again changes nothing.
      const all = gen.randn(n, dtype);
      let at = 0;
      normals = {
        read(out) {
          out.set(all.subarray(at, at + out.length));
          at += out.length;
        },
      };
    }
  }
  const size = dtypeSize(dtype);
  let scratch: Float32Array | null = null;
  const applyBytes = (src: Uint8Array, inPlace = false): Buffer => {
    const out = inPlace ? Buffer.from(src.buffer, src.byteOffset, src.byteLength) : Buffer.allocUnsafe(src.length);
    const nat = dtype === 'F16' ? null : normalsNative();
    if (nat) {
      // The native kernel reads src where it lies and the normals where the generator thread left them.
      const count = src.length / size;
      for (let done = 0; done < count; ) {
        let norm: Float32Array;
        if (ahead) norm = ahead.view(count - done);
        else {
          scratch ??= new Float32Array(Math.min(FLOAT_CAP, count));
          norm = scratch.subarray(0, Math.min(scratch.length, count - done));
          normals.read(norm);
        }
        const from = done * size, to = (done + norm.length) * size;
        nat.addon.apply(dtype === 'BF16' ? 0 : 1, src.subarray(from, to), norm, out.subarray(from, to), scale, nat.kernel);
        done += norm.length;
      }
      return out;
    }
    const k = floatKernels();
    if (k) {
      const count = src.length / size;
      for (let off = 0; off < count; off += FLOAT_CAP) {
        const m = Math.min(FLOAT_CAP, count - off);
        k.src.set(src.subarray(off * size, (off + m) * size));
        if (normals.span) {
          // The normals are read where the generator's kernel wrote them (no copy).
          for (let done = 0; done < m; ) {
            const s = normals.span(m - done, k.norm, k.NORM);
            k.noiseAt(dtype, s.count, scale, k.SRC + done * size, s.address, k.DST + done * size);
            done += s.count;
          }
        } else {
          normals.read(k.norm.subarray(0, m));
          k.noise(dtype, m, scale);
        }
        out.set(k.dst.subarray(0, m * size), off * size);
      }
      return out;
    }
    // Without WebAssembly: the same steps one value at a time (float64 sums and products of two float32
    // values round to float32 exactly as float32 arithmetic does).
    const v = decodeFloats(Buffer.from(src.buffer, src.byteOffset, src.byteLength), dtype);
    const nrm = new Float32Array(v.length);
    normals.read(nrm);
    for (let i = 0; i < v.length; i++) v[i] = roundTo(dtype, v[i]! + roundTo(dtype, roundTo(dtype, nrm[i]!) * scale));
    out.set(encodeFloats(v, dtype));
    return out;
  };
  return {
    applyBytes,
    apply(values) {
      const noised = decodeFloats(applyBytes(encodeFloats(values, dtype)), dtype);
      values.set(noised);
    },
    close: () => ahead?.close(),
    ready: (values) => ahead?.ready(values) ?? Promise.resolve(),
    batch: ahead ? NORMALS_AHEAD_BATCH : Infinity,
  };
}

/**
 * residual_scale: raw bytes of `dtype` times s (a float32), each product rounded to `dtype` (float32
 * arithmetic); in place for a caller that owns src and is done with it.
 */
export function scaleBytes(src: Buffer, dtype: FloatDtype, s: number, inPlace = false): Buffer {
  const k = floatKernels();
  if (k) return scaleThrough(k, src, dtype, s, inPlace ? src : undefined);
  const v = decodeFloats(src, dtype);
  for (let i = 0; i < v.length; i++) v[i] = roundTo(dtype, v[i]! * s);
  const out = encodeFloats(v, dtype);
  if (!inPlace) return out;
  out.copy(src);
  return src;
}
