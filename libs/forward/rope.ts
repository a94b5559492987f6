import { ModelError } from '../errors';
import type { ModelConfig } from '../model-folder';

const f = Math.fround;

/**
 * RoPE inverse frequencies as transformers computes them (float32 arithmetic, hence the frounds),
 * for the scaling types whose result does not change the attention maths: default, linear, llama3,
 * and dynamic NTK (which depends on the sequence length, so it takes `seqLen`).
 */
export function ropeInvFreq(cfg: ModelConfig, seqLen: number): Float64Array {
  const dim = cfg.headDim;
  const half = dim / 2;
  const sc = cfg.ropeScaling;
  let base = cfg.ropeTheta;
  const type = sc?.rope_type ?? 'default';
  const factor = typeof sc?.factor === 'number' ? sc.factor : 1;
  if (type === 'dynamic') {
    const maxPos = typeof sc?.original_max_position_embeddings === 'number'
      ? sc.original_max_position_embeddings
      : typeof cfg.raw.max_position_embeddings === 'number' ? (cfg.raw.max_position_embeddings as number) : Infinity;
    if (seqLen > maxPos) base = base * ((factor * seqLen) / maxPos - (factor - 1)) ** (dim / (dim - 2));
  }
  const inv = new Float64Array(half);
  for (let k = 0; k < half; k++) inv[k] = f(1 / f(base ** f((2 * k) / dim)));
  if (type === 'default' || type === 'dynamic') return inv;
  if (type === 'linear') {
    for (let k = 0; k < half; k++) inv[k] = f(inv[k]! / factor);
    return inv;
  }
  if (type === 'llama3') {
    const need = ['factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'] as const;
    for (const key of need) {
      if (typeof sc?.[key] !== 'number') {
        throw new ModelError('bad_rope_scaling', `rope_type "llama3" needs a number "${key}"`, { file: cfg.file, field: `rope_scaling.${key}` });
      }
    }
    const low = sc!.low_freq_factor!, high = sc!.high_freq_factor!, old = sc!.original_max_position_embeddings!;
    const lowWl = old / low, highWl = old / high;
    for (let k = 0; k < half; k++) {
      const x = inv[k]!;
      const wl = (2 * Math.PI) / x;
      if (wl < highWl) continue; // high frequencies unchanged
      if (wl > lowWl) {
        inv[k] = f(x / factor);
        continue;
      }
      const s = (old / wl - low) / (high - low);
      inv[k] = f((1 - s) * (x / factor) + s * x);
    }
    return inv;
  }
  throw new ModelError(
    'unsupported_rope_scaling',
    `rope_type "${type}" is not supported by the forward pass (supported: default, linear, dynamic, llama3)`,
    { file: cfg.file, field: 'rope_scaling.rope_type' },
  );
}

/** cos/sin tables [T, headDim] for positions 0..T-1 (halves duplicated, as rotate-half RoPE uses them). */
export function ropeTables(cfg: ModelConfig, seqLen: number): { cos: Float32Array; sin: Float32Array } {
  const inv = ropeInvFreq(cfg, seqLen);
  const d = cfg.headDim, half = d / 2;
  const cos = new Float32Array(seqLen * d);
  const sin = new Float32Array(seqLen * d);
  for (let t = 0; t < seqLen; t++) {
    for (let k = 0; k < half; k++) {
      const a = f(t * inv[k]!);
      const c = Math.cos(a), s = Math.sin(a);
      cos[t * d + k] = c;
      cos[t * d + k + half] = c;
      sin[t * d + k] = s;
      sin[t * d + k + half] = s;
    }
  }
  return { cos, sin };
}

/** Additive attention mask [T, T]: query i sees key j when j <= i and, with a window w, i - w < j. */
export function attentionMask(seqLen: number, window: number | null): Float32Array {
  const m = new Float32Array(seqLen * seqLen);
  for (let i = 0; i < seqLen; i++) {
    for (let j = 0; j < seqLen; j++) {
      const visible = j <= i && (window === null || i - window < j);
      m[i * seqLen + j] = visible ? 0 : -Infinity;
    }
  }
  return m;
}
