import { Rng } from '../gates/rng';
import { Mt19937, TorchGenerator, wordsOf, TORCH_SMALL_NORMAL, type TorchRngState } from '../gates/torch-rng';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type FloatDtype } from '../safetensors/dtype';
import type { ArchContext, OutputArchitecture } from '../architectures/types';
import type { PlanTensor, SourcePart } from '../plan/types';

/**
 * Expert noise (spec 3.6) behind one interface, chosen by the `rng` option: our per-tensor streams, or
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

/** The state after the reference's router draw (spec 6: the first draw), or the seed's state without one. */
export function torchStateAfterGates(seed: number, gateMode: string, gateValues: number): TorchRngState {
  const start: TorchRngState = { offset: 0, cachedNormal: null };
  if (gateMode === 'random') return advanceTorchState(seed, start, 'randn', gateValues, 'F32');
  if (gateMode === 'uniform_random') return advanceTorchState(seed, start, 'rand', gateValues, 'F32');
  return start;
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
    state = advanceTorchState(ctx.seed, state, 'randn', n, p.dtype as FloatDtype);
  }
  if (byStream.size > 0) throw new Error(`internal: noised tensors outside the reference's draw order: ${[...byStream.keys()].join(', ')}`);
}

/**
 * Positions PyTorch's generator at planned states. Writing in another order than the reference draws
 * (the classic layout, kept shards) seeks back to the nearest saved state and skips forward.
 */
export class TorchDrawSeeker {
  private current: Mt19937 | null = null;
  private readonly saved: Mt19937[] = [];

  constructor(private readonly seed: number) {}

  at(state: TorchRngState): TorchGenerator {
    let mt = this.current;
    if (!mt || mt.offset > state.offset) {
      const from = this.saved.filter((s) => s.offset <= state.offset).reduce<Mt19937 | null>((a, s) => (!a || s.offset > a.offset ? s : a), null);
      mt = from ? from.clone() : new Mt19937(this.seed);
    }
    mt.skip(state.offset - mt.offset);
    if (!this.saved.some((s) => s.offset === mt!.offset)) this.saved.push(mt.clone());
    this.current = mt;
    const g = new TorchGenerator(this.seed);
    g.mt = mt;
    g.cachedNormal = state.cachedNormal;
    return g;
  }
}

/** Adds a tensor's noise to its values chunk by chunk (values in the source dtype, front to back). */
export interface NoiseApplier {
  apply(values: Float32Array): void;
}

/** One noise applier per source part; `seeker` is shared by the parts of one write. */
export function noiseApplier(part: SourcePart, seeker: () => TorchDrawSeeker): NoiseApplier | null {
  const noise = part.noise;
  if (!noise) return null;
  const dtype = part.dtype;
  const scale = Math.fround(noise.scale);
  if (!noise.torch) {
    const rng = new Rng(noise.seed, noise.stream);
    return {
      apply(v) {
        for (let i = 0; i < v.length; i++) v[i] = roundTo(dtype, v[i]! + scale * roundTo(dtype, rng.normal()));
      },
    };
  }
  // The reference: W + randn_like(W) * noise_scale, each op in W's dtype (float32 arithmetic, rounded).
  const n = part.shape.reduce((a, b) => a * b, 1);
  const gen = seeker().at(noise.torch);
  const fd = dtype as FloatDtype;
  let read: (out: Float32Array) => void;
  if (n >= TORCH_SMALL_NORMAL) {
    const s = gen.randnStream(n, fd);
    read = (out) => s.read(out);
  } else {
    const all = gen.randn(n, fd);
    let at = 0;
    read = (out) => {
      out.set(all.subarray(at, at + out.length));
      at += out.length;
    };
  }
  let buf = new Float32Array(0);
  return {
    apply(v) {
      if (buf.length !== v.length) buf = new Float32Array(v.length);
      read(buf);
      if (fd === 'F32') {
        for (let i = 0; i < v.length; i++) v[i] = Math.fround(v[i]! + Math.fround(buf[i]! * scale));
      } else {
        for (let i = 0; i < v.length; i++) v[i] = roundTo(fd, v[i]! + roundTo(fd, buf[i]! * scale));
      }
    },
  };
}
