import { ModelError } from '../errors';
import type { ModelConfig } from './config';
import type { TensorIndex } from '../safetensors';
import { isWeightDtype, WEIGHT_DTYPES, type WeightDtype } from '../safetensors';

/** A tensor's dtype, when a merge can read it as numbers; else the error naming the tensor. */
export function weightDtype(ref: string, name: string, t: { dtype: string; file: string }): WeightDtype {
  if (isWeightDtype(t.dtype)) return t.dtype;
  throw new ModelError('unsupported_dtype', `model ${ref} stores this tensor as ${t.dtype}; only ${WEIGHT_DTYPES.join(', ')} weights can be merged (dequantise the model first)`, { file: t.file, tensor: name });
}

/** Every tensor name a dense decoder of this config may hold, with the shape its config.json implies. */
export function expectedShapes(cfg: ModelConfig): Map<string, number[]> {
  const H = cfg.hiddenSize, D = cfg.headDim, I = cfg.intermediateSize, V = cfg.vocabSize;
  const qDim = cfg.numHeads * D, kvDim = cfg.numKvHeads * D;
  const out = new Map<string, number[]>([
    ['model.embed_tokens.weight', [V, H]],
    ['lm_head.weight', [V, H]],
    ['model.norm.weight', [H]],
  ]);
  const perLayer: [string, number[]][] = [
    ['input_layernorm.weight', [H]],
    ['post_attention_layernorm.weight', [H]],
    ['self_attn.q_proj.weight', [qDim, H]],
    ['self_attn.k_proj.weight', [kvDim, H]],
    ['self_attn.v_proj.weight', [kvDim, H]],
    ['self_attn.o_proj.weight', [H, qDim]],
    ['self_attn.q_proj.bias', [qDim]],
    ['self_attn.k_proj.bias', [kvDim]],
    ['self_attn.v_proj.bias', [kvDim]],
    ['self_attn.o_proj.bias', [H]],
    ['self_attn.q_norm.weight', [D]],
    ['self_attn.k_norm.weight', [D]],
    ['mlp.gate_proj.weight', [I, H]],
    ['mlp.up_proj.weight', [I, H]],
    ['mlp.down_proj.weight', [H, I]],
    ['mlp.gate_proj.bias', [I]],
    ['mlp.up_proj.bias', [I]],
    ['mlp.down_proj.bias', [H]],
  ];
  for (let l = 0; l < cfg.numLayers; l++) for (const [suffix, shape] of perLayer) out.set(`model.layers.${l}.${suffix}`, shape);
  return out;
}

/**
 * Every tensor of a model that a merge or the forward pass reads has the shape its config implies and a
 * float dtype: checked from the headers alone, before any forward pass or output, so a transposed
 * projection or a quantised checkpoint never becomes a wrong model.
 */
export function checkModelTensors(ref: string, config: ModelConfig, weights: Pick<TensorIndex, 'has' | 'get'>): void {
  for (const [name, want] of expectedShapes(config)) {
    if (!weights.has(name)) continue;
    const t = weights.get(name);
    weightDtype(ref, name, t);
    if (t.shape.length !== want.length || t.shape.some((d, i) => d !== want[i])) {
      throw new ModelError('shape_mismatch', `model ${ref} has shape [${t.shape.join(', ')}] but ${config.file} implies [${want.join(', ')}]`, { file: t.file, tensor: name });
    }
  }
}
