import { realpath } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { ForgeError } from '../errors';
import { readModelConfig, type ModelConfig } from '../model-folder/config';
import { decodeFloats, readRows, readTensorBytes, type TensorIndex, type TensorLocation } from '../safetensors';
import { openWeights } from '../model-folder/weights';
import { executionProviders, floatTensor, sessionFromBytes, sessionFromFolder, type Device, type Session, type SessionSettings } from './backend';
import { encodeModel, type TensorData } from './onnx-proto';
import { LAYER_INPUTS, LAYER_OUTPUT, buildLayerModel, checkTensor, planLayerTensors } from './layer-graph';
import { attentionMask, ropeTables } from './rope';

export interface ForwardProgress {
  /** The decoder layer being run (0-based). */
  layer: number;
  /** Decoder layers this call runs. */
  layers: number;
  promptsDone: number;
  prompts: number;
  /** How this layer's weights reached onnxruntime. */
  weights: 'external' | 'memory';
}

export interface ForwardOptions {
  device?: Device;
  onProgress?: (p: ForwardProgress) => void;
  /** intra-op threads per session (default 2). */
  threads?: number;
  /**
   * 'external' points the graph at the safetensors bytes (a small .onnx is written beside them),
   * 'memory' embeds them, 'auto' (default) tries external and falls back when the folder is read-only.
   */
  weights?: 'auto' | 'external' | 'memory';
}

/** One prompt's state at one layer input: last token, sum over tokens (float64-accumulated), token count. */
export interface LayerState {
  last: Float32Array;
  sum: Float32Array;
  count: number;
}

interface Sequence {
  ids: number[];
  /** 0 for the pad state: the layer runs without its attention term (spec 10). */
  attnGate: 0 | 1;
}

/** Per sequence, the [T, H] states at layer inputs 0..upTo (upTo = L is the last layer's output, before the final norm). */
type Visit = (seq: number, entry: number, states: Float32Array) => void;

interface Model {
  cfg: ModelConfig;
  weights: TensorIndex;
  /** Weight file -> its real path (symlinks resolved), for placing the .onnx beside the real bytes. */
  real: Map<string, string>;
  /** Set once writing beside the weights failed, so later layers go straight to embedding. */
  readOnly?: boolean;
}

async function openModel(dir: string): Promise<Model> {
  const cfg = await readModelConfig(dir);
  // A .bin checkpoint's stored tensors are read in place just like safetensors.
  return { cfg, weights: await openWeights(dir), real: new Map() };
}

/** Reads and decodes only the embedding rows that the sequences use. */
async function embedRows(m: Model, ids: Iterable<number>): Promise<Map<number, Float32Array>> {
  const loc = m.weights.get('model.embed_tokens.weight');
  checkTensor(loc, [loc.shape[0] ?? 0, m.cfg.hiddenSize]);
  return readRows(loc, ids);
}

async function realFile(m: Model, file: string): Promise<string> {
  let r = m.real.get(file);
  if (!r) {
    r = await realpath(file);
    m.real.set(file, r);
  }
  return r;
}

/** One layer's session. External data must name plain files in the .onnx file's real folder. */
async function layerSession(m: Model, layer: number, settings: SessionSettings, mode: 'auto' | 'external' | 'memory'): Promise<{ session: Session; weights: 'external' | 'memory' }> {
  const tensors = planLayerTensors(m.cfg, m.weights, layer);
  if (mode === 'external' || (mode === 'auto' && !m.readOnly)) {
    const reals = await Promise.all([...tensors.values()].map((t) => realFile(m, t.loc.file)));
    const folders = new Set(reals.map((r) => dirname(r)));
    if (folders.size === 1) {
      const realOf = new Map([...tensors.values()].map((t, i) => [t.loc.file, reals[i]!]));
      const model = buildLayerModel(m.cfg, tensors, (loc) => ({ external: { location: basename(realOf.get(loc.file)!), offset: loc.offset, length: loc.byteLength } }));
      const session = await sessionFromFolder([...folders][0]!, encodeModel(model), settings);
      if (session) return { session, weights: 'external' };
      m.readOnly = true;
    }
    if (mode === 'external') {
      throw new ForgeError('external_weights_unavailable', `cannot point onnxruntime at the weights of layer ${layer} in place (folder not writable or shards in different folders)`, { file: m.weights.dir });
    }
  }
  return { session: await sessionFromBytes(await embeddedLayer(m, layer, tensors), settings), weights: 'memory' };
}

/** The layer with its weights embedded; the per-tensor buffers die with this call, only the model bytes stay. */
async function embeddedLayer(m: Model, layer: number, tensors: ReturnType<typeof planLayerTensors>): Promise<Uint8Array> {
  const bytes = new Map<TensorLocation, Uint8Array>();
  for (const t of tensors.values()) bytes.set(t.loc, await readTensorBytes(t.loc));
  const model = buildLayerModel(m.cfg, tensors, (loc): TensorData => ({ raw: bytes.get(loc)! }));
  try {
    return encodeModel(model);
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new ForgeError('layer_too_large', `layer ${layer} is too large to embed in one ONNX model (${e.message}); make the folder holding the weights writable so they can be used in place`, { file: m.weights.dir });
  }
}

/**
 * Runs the sequences layer by layer: one session per layer, every sequence through it, then the
 * session is released, so only one layer's weights are held. Calls `visit` for entries 0..upTo.
 */
async function runLayers(m: Model, seqs: Sequence[], upTo: number, opts: ForwardOptions, visit: Visit): Promise<void> {
  const { cfg } = m;
  const H = cfg.hiddenSize;
  executionProviders(opts.device ?? 'cpu'); // an unavailable device fails before any weight is read
  if (upTo < 0 || upTo > cfg.numLayers) throw new RangeError(`upTo ${upTo} outside 0..${cfg.numLayers}`);
  for (const [i, s] of seqs.entries()) {
    if (s.ids.length === 0) throw new ForgeError('empty_prompt', `prompt ${i} has no tokens`, { field: `prompts[${i}]` });
  }
  if (seqs.length === 0) return;
  // Names, dtypes and shapes of every layer are checked before any layer runs.
  for (let l = 0; l < cfg.numLayers; l++) planLayerTensors(cfg, m.weights, l);
  const rows = await embedRows(m, seqs.flatMap((s) => s.ids));
  let states: Float32Array[] = seqs.map((s) => {
    const h = new Float32Array(s.ids.length * H);
    s.ids.forEach((id, t) => h.set(rows.get(id)!, t * H));
    return h;
  });
  states.forEach((h, i) => visit(i, 0, h));
  const settings: SessionSettings = { device: opts.device ?? 'cpu', threads: opts.threads ?? 2 };
  const inputsByLen = new Map<string, Record<string, ReturnType<typeof floatTensor>>>();
  const fixedInputs = (T: number, gate: 0 | 1) => {
    const key = `${T}:${gate}`;
    let r = inputsByLen.get(key);
    if (!r) {
      const { cos, sin } = ropeTables(cfg, T);
      // The pad state has no attention term; any finite mask keeps its (discarded) softmax finite.
      const mask = gate ? attentionMask(T, cfg.slidingWindow) : new Float32Array(T * T);
      r = {
        [LAYER_INPUTS.cos]: floatTensor(cos, [T, cfg.headDim]),
        [LAYER_INPUTS.sin]: floatTensor(sin, [T, cfg.headDim]),
        [LAYER_INPUTS.mask]: floatTensor(mask, [T, T]),
        [LAYER_INPUTS.gate]: floatTensor(new Float32Array(T).fill(gate), [T, 1]),
      };
      inputsByLen.set(key, r);
    }
    return r;
  };
  for (let layer = 0; layer < upTo; layer++) {
    const { session, weights } = await layerSession(m, layer, settings, opts.weights ?? 'auto');
    try {
      const next: Float32Array[] = [];
      for (const [i, s] of seqs.entries()) {
        const T = s.ids.length;
        const feeds = { ...fixedInputs(T, s.attnGate), [LAYER_INPUTS.hidden]: floatTensor(states[i]!, [T, H]) };
        const out = await session.run(feeds);
        const t = out[LAYER_OUTPUT]!;
        // Copy out of ORT's buffer, then free the native tensor now rather than at GC.
        next.push(new Float32Array(t.data as Float32Array));
        t.dispose();
        visit(i, layer + 1, next[i]!);
        opts.onProgress?.({ layer, layers: upTo, promptsDone: i + 1, prompts: seqs.length, weights });
      }
      states = next;
    } finally {
      await session.release();
    }
  }
}

function checkPrompts(prompts: number[][]): void {
  if (!Array.isArray(prompts)) throw new ForgeError('bad_prompts', 'prompts must be an array of token id arrays');
}

/**
 * Per prompt (token ids, run one at a time at positions 0..T-1, no padding) and per layer input
 * l = 0..L-1 (0 = embeddings, l = output of layer l-1): the last token's state, the sum over tokens,
 * and the token count. The last layer itself never runs: the reference drops its output (spec 2.2).
 */
export async function computePromptStates(modelDir: string, prompts: number[][], opts: ForwardOptions = {}): Promise<LayerState[][]> {
  checkPrompts(prompts);
  const m = await openModel(modelDir);
  const L = m.cfg.numLayers, H = m.cfg.hiddenSize;
  const result: LayerState[][] = prompts.map(() => new Array<LayerState>(L));
  await runLayers(m, prompts.map((ids) => ({ ids, attnGate: 1 })), L - 1, opts, (i, entry, h) => {
    const T = h.length / H;
    const sum = new Float64Array(H);
    for (let t = 0; t < T; t++) for (let j = 0; j < H; j++) sum[j]! += h[t * H + j]!;
    result[i]![entry] = { last: h.slice((T - 1) * H), sum: Float32Array.from(sum), count: T };
  });
  return result;
}

/**
 * The state of a left-pad position at each layer input 0..L-1, as the reference's sdpa attention
 * leaves it (spec 10): h(0) = embed(pad), h(l+1) = h(l) + mlp_l(post_attention_layernorm_l(h(l))).
 */
export async function computePadStates(modelDir: string, padTokenId: number, opts: ForwardOptions = {}): Promise<Float32Array[]> {
  const m = await openModel(modelDir);
  const out: Float32Array[] = new Array(m.cfg.numLayers);
  await runLayers(m, [{ ids: [padTokenId], attnGate: 0 }], m.cfg.numLayers - 1, opts, (_i, entry, h) => {
    out[entry] = h;
  });
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
