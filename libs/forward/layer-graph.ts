import { ModelError } from '../errors';
import type { ModelConfig } from '../model-folder';
import type { TensorIndex, TensorLocation } from '../safetensors';
import { OnnxDtype, type OnnxModel, type OnnxNode, type OnnxTensor, type OnnxValueInfo } from './onnx-proto';

/** Graph inputs of one decoder layer; T is the number of tokens (several prompts packed one after another). */
export const LAYER_INPUTS = {
  hidden: 'hidden', // [T, H] residual stream entering the layer
  cos: 'rope_cos', // [T, headDim], each token at its own position in its prompt
  sin: 'rope_sin', // [T, headDim]
  mask: 'attn_mask', // [B, C, C] additive causal mask of each attention block (one prompt, padded to C slots)
  gate: 'attn_gate', // [T, 1]: 1 for tokens, 0 for the attention-free pad state
  slots: 'attn_slots', // int64 [B * C]: the token row each block slot reads (a padding slot reads any row)
  rows: 'attn_rows', // int64 [T]: the block slot each token's attention output comes from
} as const;
/** The graph input that carries a weight (float32, the tensor's shape). */
export const weightInput = (role: string) => `w_${role}`;
export const LAYER_OUTPUT = 'hidden_out';
/** attentionOnly graphs: the residual stream after attention, output instead of the layer's output. */
export const ATTN_OUTPUT = 'hidden_attn';
/**
 * [T, H]: the post-attention RMSNorm output, the input a MoE layer's router sees. An output of attentionOnly
 * graphs (the merged model's forward), and an extra output of full graphs built with routerInput (fit's states).
 */
export const ROUTER_INPUT = 'router_input';

const STORED_DTYPES: Record<string, number> = { F32: OnnxDtype.FLOAT, F16: OnnxDtype.FLOAT16, BF16: OnnxDtype.BFLOAT16 };

export interface LayerTensor {
  role: string;
  loc: TensorLocation;
}

/** Roles of one layer's tensors, validated against the config: present, float, and the expected shape. */
export function planLayerTensors(cfg: ModelConfig, weights: TensorIndex, layer: number): Map<string, LayerTensor> {
  const H = cfg.hiddenSize, D = cfg.headDim, I = cfg.intermediateSize;
  const qDim = cfg.numHeads * D, kvDim = cfg.numKvHeads * D;
  const p = `model.layers.${layer}.`;
  const want: [string, string, number[], 'required' | 'optional'][] = [
    ['ln1', 'input_layernorm.weight', [H], 'required'],
    ['ln2', 'post_attention_layernorm.weight', [H], 'required'],
    ['q', 'self_attn.q_proj.weight', [qDim, H], 'required'],
    ['k', 'self_attn.k_proj.weight', [kvDim, H], 'required'],
    ['v', 'self_attn.v_proj.weight', [kvDim, H], 'required'],
    ['o', 'self_attn.o_proj.weight', [H, qDim], 'required'],
    ['q_bias', 'self_attn.q_proj.bias', [qDim], cfg.modelType === 'qwen2' ? 'required' : 'optional'],
    ['k_bias', 'self_attn.k_proj.bias', [kvDim], cfg.modelType === 'qwen2' ? 'required' : 'optional'],
    ['v_bias', 'self_attn.v_proj.bias', [kvDim], cfg.modelType === 'qwen2' ? 'required' : 'optional'],
    ['o_bias', 'self_attn.o_proj.bias', [H], 'optional'],
    ['q_norm', 'self_attn.q_norm.weight', [D], cfg.modelType === 'qwen3' ? 'required' : 'optional'],
    ['k_norm', 'self_attn.k_norm.weight', [D], cfg.modelType === 'qwen3' ? 'required' : 'optional'],
    ['gate', 'mlp.gate_proj.weight', [I, H], 'required'],
    ['up', 'mlp.up_proj.weight', [I, H], 'required'],
    ['down', 'mlp.down_proj.weight', [H, I], 'required'],
    ['gate_bias', 'mlp.gate_proj.bias', [I], 'optional'],
    ['up_bias', 'mlp.up_proj.bias', [I], 'optional'],
    ['down_bias', 'mlp.down_proj.bias', [H], 'optional'],
  ];
  const out = new Map<string, LayerTensor>();
  for (const [role, suffix, shape, need] of want) {
    const name = p + suffix;
    if (need === 'optional' && !weights.has(name)) continue;
    const loc = weights.get(name); // throws naming the tensor and file
    checkTensor(loc, shape);
    out.set(role, { role, loc });
  }
  return out;
}

export function checkTensor(loc: TensorLocation, shape: number[]): void {
  if (STORED_DTYPES[loc.dtype] === undefined) {
    throw new ModelError('unsupported_dtype', `dtype ${loc.dtype} is not supported by the forward pass (F32, F16, BF16)`, { file: loc.file, tensor: loc.name });
  }
  if (loc.shape.length !== shape.length || loc.shape.some((d, i) => d !== shape[i])) {
    throw new ModelError('shape_mismatch', `shape [${loc.shape.join(', ')}] does not match the config, expected [${shape.join(', ')}]`, { file: loc.file, tensor: loc.name });
  }
}

/** Builds the nodes of a graph with fresh value names. */
class Builder {
  readonly nodes: OnnxNode[] = [];
  readonly initializers: OnnxTensor[] = [];
  private n = 0;

  op(op: string, inputs: string[], attrs?: OnnxNode['attrs'], outName?: string, domain?: string): string {
    const out = outName ?? `${op.toLowerCase()}_${this.n++}`;
    this.nodes.push({ op, inputs, outputs: [out], name: `${op}_${this.n++}`, attrs, ...(domain ? { domain } : {}) });
    return out;
  }

  ops(op: string, inputs: string[], outputs: number, attrs?: OnnxNode['attrs']): string[] {
    const outs = Array.from({ length: outputs }, () => `${op.toLowerCase()}_${this.n++}`);
    this.nodes.push({ op, inputs, outputs: outs, name: `${op}_${this.n++}`, attrs });
    return outs;
  }

  /** A named float constant, added once (a graph may ask for it from several places). */
  constF(name: string, v: number): string {
    if (this.initializers.some((t) => t.name === name)) return name;
    this.initializers.push({ name, dtype: OnnxDtype.FLOAT, dims: [], data: { float: [v] } });
    return name;
  }

  constI64(name: string, v: number[]): string {
    this.initializers.push({ name, dtype: OnnxDtype.INT64, dims: [v.length], data: { int64: v } });
    return name;
  }
}

/** What decides a layer's graph: the roles present and their shapes (same key, same session). */
export function layerSignature(tensors: Map<string, LayerTensor>): string {
  return [...tensors.values()].map((t) => `${t.role}:${t.loc.shape.join('x')}`).join(',');
}

export interface LayerGraphOptions {
  attentionOnly?: boolean;
  routerInput?: boolean;
  /**
   * The projections as 8-bit blocks with a float32 scale each (`quantizeInt8`): initializers `w_<role>_q8` and
   * `w_<role>_scale` whose bytes come from memory (externalData) when the session is made.
   */
  int8?: boolean;
}

const MS_DOMAIN = 'com.microsoft';

/** The quantization block along K: 32 values, or 16 where K is not a multiple of 32 (onnxruntime's smallest). */
export function int8BlockSize(K: number): number {
  return K % 32 === 0 ? 32 : 16;
}

/** A graph's float32 weight inputs, each added the first time a role present in `tensors` is asked for. */
function weightInputsOf(tensors: Map<string, LayerTensor>): { w: (role: string) => string | null; weightInputs: OnnxValueInfo[] } {
  const weightInputs: OnnxValueInfo[] = [];
  const w = (role: string): string | null => {
    const t = tensors.get(role);
    if (!t) return null;
    weightInputs.push({ name: weightInput(role), dtype: OnnxDtype.FLOAT, shape: t.loc.shape });
    return weightInput(role);
  };
  return { w, weightInputs };
}

/** The per-pack inputs attention reads (packInputs): RoPE tables, the blocks' masks, slots and rows. */
function packInputInfos(D: number): OnnxValueInfo[] {
  const F = OnnxDtype.FLOAT;
  return [
    { name: LAYER_INPUTS.cos, dtype: F, shape: ['T', D] },
    { name: LAYER_INPUTS.sin, dtype: F, shape: ['T', D] },
    { name: LAYER_INPUTS.mask, dtype: F, shape: ['B', 'C', 'C'] },
    { name: LAYER_INPUTS.slots, dtype: OnnxDtype.INT64, shape: ['S'] },
    { name: LAYER_INPUTS.rows, dtype: OnnxDtype.INT64, shape: ['T'] },
  ];
}

/** RMSNorm over the last axis, as transformers computes it in float32. */
function rmsNormOp(b: Builder, cfg: ModelConfig, x: string, weight: string): string {
  const ms = b.op('ReduceMean', [b.op('Mul', [x, x])], { axes: [-1], keepdims: 1 });
  const normed = b.op('Div', [x, b.op('Sqrt', [b.op('Add', [ms, b.constF('eps', cfg.rmsNormEps)])])]);
  return b.op('Mul', [normed, weight]);
}

/**
 * Attention from the projected queries [T, nH * D], keys and values [T, nKV * D] to the context [T, nH * D] that
 * o_proj takes: qwen3's per-head norms, RoPE, then each prompt's causal attention in its own block.
 */
function attentionContext(b: Builder, cfg: ModelConfig, q0: string, k0: string, v0: string, w: (role: string) => string | null): string {
  const D = cfg.headDim;
  const nH = cfg.numHeads, nKV = cfg.numKvHeads;
  if (nH % nKV !== 0) {
    throw new ModelError('bad_config', `num_attention_heads ${nH} is not a multiple of num_key_value_heads ${nKV}`, { file: cfg.file, field: 'num_key_value_heads' });
  }
  if (D % 2 !== 0) throw new ModelError('bad_config', `head_dim ${D} must be even for RoPE`, { file: cfg.file, field: 'head_dim' });
  const g = nH / nKV;
  const rmsNorm = (x: string, weight: string): string => rmsNormOp(b, cfg, x, weight);
  // Queries as [T, nKV, g, D] and keys/values as [T, nKV, 1, D]: in attention, MatMul broadcasting does the
  // grouped-query repeat (query head h uses KV head floor(h / g), as transformers' repeat_kv).
  let q = b.op('Reshape', [q0, b.constI64('q_shape', [-1, nKV, g, D])]);
  let k = b.op('Reshape', [k0, b.constI64('kv_shape', [-1, nKV, 1, D])]);
  const v = b.op('Reshape', [v0, 'kv_shape']);
  const qNorm = w('q_norm'), kNorm = w('k_norm');
  if (qNorm) q = rmsNorm(q, qNorm); // qwen3: per-head RMSNorm before RoPE
  if (kNorm) k = rmsNorm(k, kNorm);
  const cos = b.op('Unsqueeze', [LAYER_INPUTS.cos, b.constI64('axes_12', [1, 2])]);
  const sin = b.op('Unsqueeze', [LAYER_INPUTS.sin, 'axes_12']);
  const rope = (x: string): string => {
    const [x1, x2] = b.ops('Split', [x], 2, { axis: -1 }) as [string, string];
    const rotated = b.op('Concat', [b.op('Neg', [x2]), x1], { axis: -1 });
    return b.op('Add', [b.op('Mul', [x, cos]), b.op('Mul', [rotated, sin])]);
  };
  q = rope(q);
  k = rope(k);
  // Attention runs per block (one prompt each, padded to the pack's longest): [B, C, ...] gathered from the
  // token rows, so packing prompts costs the sum of their T^2, not (sum of T)^2, and no padding enters a Gemm.
  const blockDims = b.op('Shape', [LAYER_INPUTS.mask], { start: 0, end: 2 }); // [B, C]
  const qBlocks = b.op('Concat', [blockDims, b.constI64('q_heads', [nKV, g, D])], { axis: 0 });
  const kvBlocks = b.op('Concat', [blockDims, b.constI64('kv_heads', [nKV, 1, D])], { axis: 0 });
  const toBlocks = (x: string, shape: string, perm: number[]): string =>
    b.op('Transpose', [b.op('Reshape', [b.op('Gather', [x, LAYER_INPUTS.slots], { axis: 0 }), shape])], { perm });
  const qb = toBlocks(q, qBlocks, [0, 2, 3, 1, 4]); // [B, nKV, g, C, D]
  const kT = toBlocks(k, kvBlocks, [0, 2, 3, 4, 1]); // [B, nKV, 1, D, C]
  const vb = toBlocks(v, kvBlocks, [0, 2, 3, 1, 4]); // [B, nKV, 1, C, D]
  const scale = b.constF('attn_scale', 1 / Math.sqrt(D));
  const mask = b.op('Unsqueeze', [LAYER_INPUTS.mask, 'axes_12']); // [B, 1, 1, C, C]
  const scores = b.op('Add', [b.op('Mul', [b.op('MatMul', [qb, kT]), scale]), mask]);
  const ctx = b.op('MatMul', [b.op('Softmax', [scores], { axis: -1 }), vb]); // [B, nKV, g, C, D]
  const ctxSlots = b.op('Reshape', [b.op('Transpose', [ctx], { perm: [0, 3, 1, 2, 4] }), b.constI64('ctx_shape', [-1, nH * D])]);
  return b.op('Gather', [ctxSlots, LAYER_INPUTS.rows], { axis: 0 });
}

/**
 * One decoder layer (llama, mistral, qwen2, qwen3) as an ONNX graph over [T, H] activations. The weights
 * are float32 graph inputs, not initializers, so one session serves every layer of the same shape and no
 * file is needed to point onnxruntime at them. Projections are Gemm(transB=1) on the [out, in] weights,
 * which avoids a transposed copy.
 */
export function buildLayerModel(cfg: ModelConfig, tensors: Map<string, LayerTensor>, opts: LayerGraphOptions = {}): OnnxModel {
  const b = new Builder();
  const H = cfg.hiddenSize, D = cfg.headDim;
  const { w, weightInputs } = weightInputsOf(tensors);
  const need = (role: string): string => w(role)!;
  const rmsNorm = (x: string, weight: string): string => rmsNormOp(b, cfg, x, weight);
  const linear = (x: string, role: string): string => {
    const bias = w(`${role}_bias`);
    if (opts.int8) {
      // com.microsoft MatMulNBits on 8-bit blocks (constant initializers, so onnxruntime packs them once);
      // accuracy_level 4 quantizes the activations to int8 too, which VNNI CPUs multiply natively.
      const [N, K] = tensors.get(role)!.loc.shape as [number, number];
      const block = int8BlockSize(K);
      const blocks = K / block;
      const q = weightInput(role);
      b.initializers.push({ name: `${q}_q8`, dtype: OnnxDtype.UINT8, dims: [N, blocks, block], data: { external: { location: `${q}_q8`, offset: 0, length: N * K } } });
      b.initializers.push({ name: `${q}_scale`, dtype: OnnxDtype.FLOAT, dims: [N * blocks], data: { external: { location: `${q}_scale`, offset: 0, length: 4 * N * blocks } } });
      const y = b.op('MatMulNBits', [x, `${q}_q8`, `${q}_scale`], { K, N, bits: 8, block_size: block, accuracy_level: 4 }, undefined, MS_DOMAIN);
      return bias ? b.op('Add', [y, bias]) : y;
    }
    return b.op('Gemm', bias ? [x, need(role), bias] : [x, need(role)], { transB: 1 });
  };
  const x = LAYER_INPUTS.hidden;
  const xn = rmsNorm(x, need('ln1'));
  const ctx2 = attentionContext(b, cfg, linear(xn, 'q'), linear(xn, 'k'), linear(xn, 'v'), w);
  const attn = b.op('Mul', [linear(ctx2, 'o'), LAYER_INPUTS.gate]);
  const h1 = b.op('Add', [x, attn]);

  const F = OnnxDtype.FLOAT;
  const hn = rmsNorm(h1, need('ln2'));
  const outputs = [opts.attentionOnly ? ATTN_OUTPUT : LAYER_OUTPUT];
  if (opts.attentionOnly) {
    // An MoE layer: its MLP runs per expert outside the graph, on the tokens the router sends it.
    b.op('Identity', [h1], undefined, ATTN_OUTPUT);
  } else {
    const gt = linear(hn, 'gate');
    const up = linear(hn, 'up');
    const act = b.op('Mul', [b.op('Mul', [gt, b.op('Sigmoid', [gt])]), up]);
    const down = linear(act, 'down');
    b.op('Add', [h1, down], undefined, LAYER_OUTPUT);
  }
  // The router's input: the merged model's routing (attentionOnly) and fit's states (routerInput) both read it.
  if (opts.attentionOnly || opts.routerInput) {
    b.op('Identity', [hn], undefined, ROUTER_INPUT);
    outputs.push(ROUTER_INPUT);
  }

  return {
    opset: 17,
    ...(opts.int8 ? { domains: { [MS_DOMAIN]: 1 } } : {}),
    graph: {
      name: 'decoder_layer',
      nodes: b.nodes,
      initializers: b.initializers,
      inputs: [
        { name: LAYER_INPUTS.hidden, dtype: F, shape: ['T', H] },
        ...packInputInfos(D),
        { name: LAYER_INPUTS.gate, dtype: F, shape: ['T', 1] },
        ...weightInputs,
      ],
      outputs: outputs.map((name) => ({ name, dtype: F, shape: ['T', H] })),
    },
  };
}

/** Inputs and output of the attention core (buildAttentionCoreModel), beside LAYER_INPUTS' rope, mask and rows. */
export const CORE_IO = { q: 'q_proj_out', k: 'k_proj_out', v: 'v_proj_out', ctx: 'attn_ctx' } as const;

/**
 * The attention between a layer's projections, for a forward pass that runs the projections itself (bf16): the
 * q, k and v projections' outputs in, the context o_proj takes out ([T, nH * D]). qwen3's q_norm and k_norm are
 * float32 weight inputs as in buildLayerModel.
 */
export function buildAttentionCoreModel(cfg: ModelConfig, tensors: Map<string, LayerTensor>): OnnxModel {
  const b = new Builder();
  const D = cfg.headDim, F = OnnxDtype.FLOAT;
  const { w, weightInputs } = weightInputsOf(tensors);
  const qDim = cfg.numHeads * D, kvDim = cfg.numKvHeads * D;
  b.op('Identity', [attentionContext(b, cfg, CORE_IO.q, CORE_IO.k, CORE_IO.v, w)], undefined, CORE_IO.ctx);
  return {
    opset: 17,
    graph: {
      name: 'attention_core',
      nodes: b.nodes,
      initializers: b.initializers,
      inputs: [
        { name: CORE_IO.q, dtype: F, shape: ['T', qDim] },
        { name: CORE_IO.k, dtype: F, shape: ['T', kvDim] },
        { name: CORE_IO.v, dtype: F, shape: ['T', kvDim] },
        ...packInputInfos(D),
        ...weightInputs,
      ],
      outputs: [{ name: CORE_IO.ctx, dtype: F, shape: ['T', qDim] }],
    },
  };
}

/** Graph inputs and outputs of the MLP pieces a large layer runs in (mlpUpModel, mlpDownModel). */
export const MLP_IO = {
  normed: 'mlp_in', // [T, H]: the post-attention RMSNorm output (the attention graph's ROUTER_INPUT)
  act: 'mlp_act', // [T, I]: silu(gate) * up over every intermediate channel, the pieces put together
  actOut: 'mlp_act_out', // [T, Ic]: one piece's channels
  downOut: 'mlp_down_out', // [T, Hr]: one piece's rows of down_proj, before the residual add
} as const;

const MLP_UP_ROLES = ['gate', 'up', 'gate_bias', 'up_bias'];
const MLP_DOWN_ROLES = ['down', 'down_bias'];

/** The weight inputs of a graph: float32, each of its tensor's shape. */
function weightInfos(tensors: Map<string, LayerTensor>, roles: string[]): OnnxValueInfo[] {
  return roles.filter((r) => tensors.has(r)).map((r) => ({ name: weightInput(r), dtype: OnnxDtype.FLOAT, shape: tensors.get(r)!.loc.shape }));
}

/**
 * One piece of a layer's MLP, channels [c0, c1) of the intermediate: silu(x gate^T + gate_bias) * (x up^T +
 * up_bias) on the normed input, with `gate`, `up` (and their biases) the rows of those channels.
 */
export function mlpUpModel(tensors: Map<string, LayerTensor>): OnnxModel {
  const b = new Builder();
  const lin = (role: string) => b.op('Gemm', tensors.has(`${role}_bias`) ? [MLP_IO.normed, weightInput(role), weightInput(`${role}_bias`)] : [MLP_IO.normed, weightInput(role)], { transB: 1 });
  const gt = lin('gate');
  b.op('Mul', [b.op('Mul', [gt, b.op('Sigmoid', [gt])]), lin('up')], undefined, MLP_IO.actOut);
  const [Ic, H] = tensors.get('gate')!.loc.shape as [number, number];
  return pieceModel('mlp_up', b, tensors, [MLP_IO.normed, H], MLP_UP_ROLES, [MLP_IO.actOut, Ic]);
}

/** Rows [r0, r1) of down_proj (and its bias) on the whole activation: that slice of the MLP's output. */
export function mlpDownModel(tensors: Map<string, LayerTensor>): OnnxModel {
  const b = new Builder();
  b.op('Gemm', tensors.has('down_bias') ? [MLP_IO.act, weightInput('down'), weightInput('down_bias')] : [MLP_IO.act, weightInput('down')], { transB: 1 }, MLP_IO.downOut);
  const [Hr, I] = tensors.get('down')!.loc.shape as [number, number];
  return pieceModel('mlp_down', b, tensors, [MLP_IO.act, I], MLP_DOWN_ROLES, [MLP_IO.downOut, Hr]);
}

/** A piece's graph: `input` [T, width] and the roles' weights in, `output` [T, width] out. */
function pieceModel(name: string, b: Builder, tensors: Map<string, LayerTensor>, input: [string, number], roles: string[], output: [string, number]): OnnxModel {
  const F = OnnxDtype.FLOAT;
  return {
    opset: 17,
    graph: { name, nodes: b.nodes, initializers: b.initializers, inputs: [{ name: input[0], dtype: F, shape: ['T', input[1]] }, ...weightInfos(tensors, roles)], outputs: [{ name: output[0], dtype: F, shape: ['T', output[1]] }] },
  };
}

/** Rows [r0, r1) of a row-major tensor (its first axis), as a tensor of its own: contiguous bytes of its file. */
export function rowSlice(t: LayerTensor, r0: number, r1: number): LayerTensor {
  const rows = t.loc.shape[0]!;
  if (!(0 <= r0 && r0 < r1 && r1 <= rows)) throw new RangeError(`rows ${r0}..${r1} outside 0..${rows} of ${t.loc.name}`);
  const rowBytes = t.loc.byteLength / rows;
  const skip = r0 * rowBytes, bytes = (r1 - r0) * rowBytes;
  return { role: t.role, loc: { ...t.loc, offset: t.loc.offset + skip, byteLength: bytes, begin: t.loc.begin + skip, end: t.loc.begin + skip + bytes, shape: [r1 - r0, ...t.loc.shape.slice(1)] } };
}

/** What one run of a layer computes: the whole layer, its attention, channels of its MLP, or rows of down_proj. */
export type LayerPhase =
  | { kind: 'whole'; tensors: Map<string, LayerTensor> }
  | { kind: 'attention'; tensors: Map<string, LayerTensor> }
  | { kind: 'up'; c0: number; c1: number; tensors: Map<string, LayerTensor> }
  | { kind: 'down'; r0: number; r1: number; tensors: Map<string, LayerTensor> };

/** n rows in pieces of at most `per` rows: as few as can be, of equal size where a count up to twice that divides n. */
export function pieces(n: number, per: number): [number, number][] {
  const least = Math.ceil(n / Math.max(1, per));
  let count = least;
  for (let c = least; c <= 2 * least; c++) {
    if (n % c === 0) {
      count = c;
      break;
    }
  }
  const size = Math.ceil(n / count);
  return Array.from({ length: count }, (_, i) => [i * size, Math.min(n, (i + 1) * size)] as [number, number]).filter(([a, b]) => a < b);
}

/**
 * The runs of a layer given `pieceBytes`: the whole layer in one where its MLP holds at most twice that in float32,
 * else its attention (which also gives the router input), then its MLP's channels in pieces (gate and up rows) and
 * down_proj's rows in pieces, each piece's float32 weights at most `pieceBytes`. A piece's bytes are contiguous in
 * its file; one piece of each kind is held at a time, and the outputs are the whole layer's bit for bit (each
 * piece splits output channels, never a sum).
 */
export function layerPhases(tensors: Map<string, LayerTensor>, pieceBytes: number): LayerPhase[] {
  const [I, H] = tensors.get('gate')!.loc.shape as [number, number];
  if (3 * 4 * I * H <= 2 * pieceBytes) return [{ kind: 'whole', tensors }];
  const pick = (roles: string[], f: (t: LayerTensor) => LayerTensor) => new Map(roles.filter((r) => tensors.has(r)).map((r) => [r, f(tensors.get(r)!)]));
  const attention = new Map([...tensors].filter(([r]) => !MLP_UP_ROLES.includes(r) && !MLP_DOWN_ROLES.includes(r)));
  const phases: LayerPhase[] = [{ kind: 'attention', tensors: attention }];
  for (const [c0, c1] of pieces(I, Math.floor(pieceBytes / (2 * 4 * H)))) phases.push({ kind: 'up', c0, c1, tensors: pick(MLP_UP_ROLES, (t) => rowSlice(t, c0, c1)) });
  for (const [r0, r1] of pieces(H, Math.floor(pieceBytes / (4 * I)))) phases.push({ kind: 'down', r0, r1, tensors: pick(MLP_DOWN_ROLES, (t) => rowSlice(t, r0, r1)) });
  return phases;
}

