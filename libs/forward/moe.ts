import { ForgeError } from '../errors';
import type { ModelConfig } from '../model-folder';
import { executionProviders, floatTensor, sessionFromBytes, type Session, type SessionSettings } from './backend';
import { ATTN_OUTPUT, LAYER_INPUTS, ROUTER_INPUT, buildLayerModel, weightInput, type LayerTensor } from './layer-graph';
import { OnnxDtype, encodeModel, type OnnxModel } from './onnx-proto';
import { packInputs, packStates, packs, type ForwardOptions, type Sequence } from './run';

/** A float32 weight and its shape. */
export interface Weight {
  shape: number[];
  data: Float32Array;
}

/** One SiLU-gated MLP: gate and up [I, H], down [H, I]. */
export interface Mlp {
  gate: Weight;
  up: Weight;
  down: Weight;
}

/** One MoE decoder layer of the merged model, every weight already rounded to the output dtype. */
export interface MoeLayerWeights {
  /** Attention roles of layer-graph.ts (ln1, ln2, q, k, v, o, biases, q_norm, k_norm). */
  attention: Map<string, Weight>;
  /** [E, H]. */
  router: Weight;
  experts: Mlp[];
  /** DeepSeek's shared experts (ungated) or Qwen2-MoE's shared expert (gated by `sharedGate`). */
  shared: Mlp | null;
  /** [1, H]: sigmoid(sharedGate · x) scales the shared expert (Qwen2-MoE). */
  sharedGate: Weight | null;
}

/** The merged model as the forward pass needs it, layer by layer (two layers' weights held at a time). */
export interface MoeModel {
  /** The merged config as a dense decoder's (attention, RoPE, sliding window, norms). */
  config: ModelConfig;
  experts: number;
  topK: number;
  /** Top-k weights renormalised to sum to 1 (Mixtral always; the others by norm_topk_prob). */
  normTopK: boolean;
  embedRows(ids: Iterable<number>): Promise<Map<number, Float32Array>>;
  /** Layer l's weights; called for layer l + 1 while layer l runs, so they must stay valid until layer l + 2 is asked for. */
  layer(l: number): Promise<MoeLayerWeights>;
}

/** Per prompt, per layer: the router's logits, [T, E] float32 row-major (what output_router_logits gives). */
export type RouterLogits = Float32Array[][];

function mlpModel(H: number, I: number): OnnxModel {
  const F = OnnxDtype.FLOAT;
  const gemm = (x: string, w: string, out: string) => ({ op: 'Gemm', inputs: [x, w], outputs: [out], name: out, attrs: { transB: 1 } });
  return {
    opset: 17,
    graph: {
      name: 'expert_mlp',
      nodes: [
        gemm('x', 'w_gate', 'g'),
        gemm('x', 'w_up', 'u'),
        { op: 'Sigmoid', inputs: ['g'], outputs: ['sg'], name: 'sg' },
        { op: 'Mul', inputs: ['g', 'sg'], outputs: ['silu'], name: 'silu' },
        { op: 'Mul', inputs: ['silu', 'u'], outputs: ['act'], name: 'act' },
        gemm('act', 'w_down', 'y'),
      ],
      initializers: [],
      inputs: [
        { name: 'x', dtype: F, shape: ['N', H] },
        { name: 'w_gate', dtype: F, shape: [I, H] },
        { name: 'w_up', dtype: F, shape: [I, H] },
        { name: 'w_down', dtype: F, shape: [H, I] },
      ],
      outputs: [{ name: 'y', dtype: F, shape: ['N', H] }],
    },
  };
}

/** x [n, H] through one expert; returns [n, H]. */
async function runMlp(sessions: Map<string, Session>, settings: SessionSettings, m: Mlp, x: Float32Array, n: number, H: number): Promise<Float32Array> {
  const I = m.gate.shape[0]!;
  const key = `${H}x${I}`;
  let s = sessions.get(key);
  if (!s) sessions.set(key, (s = await sessionFromBytes(encodeModel(mlpModel(H, I)), settings)));
  const r = await s.run({ x: floatTensor(x, [n, H]), w_gate: floatTensor(m.gate.data, m.gate.shape), w_up: floatTensor(m.up.data, m.up.shape), w_down: floatTensor(m.down.data, m.down.shape) });
  const y = r.y!;
  const out = (y.data as Float32Array).slice();
  y.dispose();
  return out;
}

/** Indices of the k largest values, largest first (ties: lower index first, as torch.topk on CPU in practice). */
export function topIndices(v: ArrayLike<number>, k: number): number[] {
  return Array.from({ length: v.length }, (_, i) => i)
    .sort((a, b) => v[b]! - v[a]! || a - b)
    .slice(0, k);
}

/**
 * Runs prompts through the merged MoE model and returns every token's router logits per layer. Attention runs
 * in the ONNX layer graph (which also gives the router input, the post-attention RMSNorm output); the MoE block
 * then routes each token (softmax, top-k, renormalised as the config says), runs each expert only on the tokens
 * sent to it, adds the shared expert, and the next layer sees the result: routing of a layer depends on every
 * routing before it. Two layers' weights are held at a time (the next one is read ahead); packs bound the activations.
 */
export async function computeRouterLogits(model: MoeModel, prompts: number[][], opts: ForwardOptions = {}): Promise<RouterLogits> {
  const cfg = model.config;
  const H = cfg.hiddenSize, L = cfg.numLayers, E = model.experts, K = model.topK;
  executionProviders(opts.device ?? 'cpu');
  for (const [i, ids] of prompts.entries()) if (ids.length === 0) throw new ForgeError('empty_prompt', `prompt ${i} has no tokens`, { field: `prompts[${i}]` });
  const seqs: Sequence[] = prompts.map((ids) => ({ ids, attnGate: 1 }));
  const out: RouterLogits = prompts.map(() => new Array<Float32Array>(L));
  if (seqs.length === 0) return out;
  const rows = await model.embedRows(prompts.flat());
  let states: Float32Array[] = seqs.map((s) => {
    const h = new Float32Array(s.ids.length * H);
    s.ids.forEach((id, t) => h.set(rows.get(id)!, t * H));
    return h;
  });
  const settings: SessionSettings = { device: opts.device ?? 'cpu', threads: opts.threads ?? 2 };
  const groups = packs(seqs, Math.max(1, opts.packTokens ?? 2048));
  const fixed = groups.map((g) => packInputs(cfg, g.map((i) => seqs[i]!)));
  const attnSessions = new Map<string, Session>();
  const mlpSessions = new Map<string, Session>();
  try {
    // The next layer's weights are read while this one runs (its file reads go on during onnxruntime's runs);
    // layer() keeps two layers' buffers, so no more than that is held.
    let ahead: Promise<MoeLayerWeights> | null = model.layer(0);
    for (let l = 0; l < L; l++) {
      const w = await ahead!;
      ahead = l + 1 < L ? model.layer(l + 1) : null;
      ahead?.catch(() => undefined); // awaited next round; a failure before then must not go unhandled
      if (w.router.shape[0] !== E || w.router.shape[1] !== H) throw new Error(`internal: layer ${l} router is [${w.router.shape.join(', ')}], expected [${E}, ${H}]`);
      const tensors = new Map<string, LayerTensor>([...w.attention].map(([role, t]) => [role, { role, loc: { name: role, file: '', offset: 0, byteLength: 0, begin: 0, end: 0, dtype: 'F32', shape: t.shape } }]));
      const key = [...tensors.values()].map((t) => `${t.role}:${t.loc.shape.join('x')}`).join(',');
      let attn = attnSessions.get(key);
      if (!attn) attnSessions.set(key, (attn = await sessionFromBytes(encodeModel(buildLayerModel(cfg, tensors, { attentionOnly: true })), settings)));
      const feeds = Object.fromEntries([...w.attention].map(([role, t]) => [weightInput(role), floatTensor(t.data, t.shape)]));
      const next: Float32Array[] = new Array(seqs.length);
      let done = 0;
      for (const [g, members] of groups.entries()) {
        const { N, hidden } = packStates(seqs, members, states, H);
        const r = await attn.run({ ...feeds, ...fixed[g]!, [LAYER_INPUTS.hidden]: floatTensor(hidden, [N, H]) });
        const h1 = (r[ATTN_OUTPUT]!.data as Float32Array).slice();
        const x = (r[ROUTER_INPUT]!.data as Float32Array).slice();
        r[ATTN_OUTPUT]!.dispose();
        r[ROUTER_INPUT]!.dispose();
        const logits = routerLogits(x, w.router.data, N, E, H);
        // Per expert: the tokens sent to it and their mixing weights.
        const sent: { tokens: number[]; weights: number[] }[] = Array.from({ length: E }, () => ({ tokens: [], weights: [] }));
        for (let t = 0; t < N; t++) {
          const row = logits.subarray(t * E, (t + 1) * E);
          const p = softmax(row);
          const top = topIndices(p, K);
          const z = model.normTopK ? top.reduce((a, e) => a + p[e]!, 0) : 1;
          for (const e of top) {
            sent[e]!.tokens.push(t);
            sent[e]!.weights.push(Math.fround(p[e]! / z));
          }
        }
        for (let e = 0; e < E; e++) {
          const { tokens, weights } = sent[e]!;
          if (tokens.length === 0) continue;
          const xe = new Float32Array(tokens.length * H);
          tokens.forEach((t, j) => xe.set(x.subarray(t * H, (t + 1) * H), j * H));
          const y = await runMlp(mlpSessions, settings, w.experts[e]!, xe, tokens.length, H);
          for (let j = 0; j < tokens.length; j++) {
            // The float32 product, then a float32 add: a sum of two float32 values rounds once when stored.
            const wt = weights[j]!, row = h1.subarray(tokens[j]! * H, (tokens[j]! + 1) * H), yj = y.subarray(j * H, (j + 1) * H);
            for (let c = 0; c < H; c++) row[c]! += Math.fround(yj[c]! * wt);
          }
        }
        if (w.shared) {
          const y = await runMlp(mlpSessions, settings, w.shared, x, N, H);
          for (let t = 0; t < N; t++) {
            const s = w.sharedGate ? Math.fround(1 / (1 + Math.exp(-dotF(x, t * H, w.sharedGate.data, 0, H)))) : 1;
            const row = h1.subarray(t * H, (t + 1) * H), yt = y.subarray(t * H, (t + 1) * H);
            for (let c = 0; c < H; c++) row[c]! += Math.fround(yt[c]! * s);
          }
        }
        let at = 0;
        for (const i of members) {
          const T = seqs[i]!.ids.length;
          next[i] = h1.slice(at * H, (at + T) * H);
          out[i]![l] = logits.slice(at * E, (at + T) * E);
          at += T;
        }
        done += members.length;
        opts.onProgress?.({ layer: l, layers: L, promptsDone: done, prompts: seqs.length });
      }
      states = next;
    }
  } finally {
    for (const s of [...attnSessions.values(), ...mlpSessions.values()]) await s.release();
  }
  return out;
}

function dotF(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s = 0;
  for (let k = 0; k < n; k++) s += a[ao + k]! * b[bo + k]!;
  return Math.fround(s);
}

/** x [N, H] times router [E, H]^T, accumulated in float64 and rounded to float32 (a float32 Gemm's result). */
export function routerLogits(x: Float32Array, router: Float32Array, N: number, E: number, H: number): Float32Array {
  const out = new Float32Array(N * E);
  for (let t = 0; t < N; t++) for (let e = 0; e < E; e++) out[t * E + e] = dotF(x, t * H, router, e * H, H);
  return out;
}

/** Softmax in float64 of float32 logits. */
export function softmax(logits: ArrayLike<number>): number[] {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) m = Math.max(m, logits[i]!);
  const e = Array.from(logits, (x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}
