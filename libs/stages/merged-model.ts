/**
 * The merged model as plan.json and the gates describe it, without a written folder: each tensor's values come
 * from its plan parts through the writer's own producer (the exact bytes the model folder gets, in the output
 * dtype), widened to float32 for the forward pass. A part the writer copies unchanged (no noise, no scale, already
 * in the output dtype) is read straight from its source file instead: the same bytes, without the copies. Each
 * tensor lands in a buffer of its own role kept across layers (two sets: one layer is read while the one before
 * runs), so no layer pays for fresh memory.
 */
import { ForgeError } from '../errors';
import type { GateTensor } from '../gates';
import { parseModelConfig } from '../model-folder';
import type { MergePlan, PlanTensor } from '../plan';
import { ChunkPool } from '../safetensors';
import { decodeFloats, dtypeSize, encodeFloats, type FloatDtype } from '../safetensors';
import { readRows, readTensorInto } from '../safetensors';
import type { Mlp, MoeLayerWeights, MoeModel, Weight } from '../forward';
import { WeightBuffer } from '../forward';
import { WasmFloatBuffer } from '../safetensors';
import { tensorProducer } from './write';

/** The dense model type whose attention each output architecture keeps. */
const ATTENTION_TYPE: Record<string, string> = { mixtral: 'mistral', deepseek: 'llama', qwen2_moe: 'qwen2', qwen3_moe: 'qwen3' };

const ATTENTION_ROLES: [string, string][] = [
  ['ln1', 'input_layernorm.weight'],
  ['ln2', 'post_attention_layernorm.weight'],
  ['q', 'self_attn.q_proj.weight'],
  ['k', 'self_attn.k_proj.weight'],
  ['v', 'self_attn.v_proj.weight'],
  ['o', 'self_attn.o_proj.weight'],
  ['q_bias', 'self_attn.q_proj.bias'],
  ['k_bias', 'self_attn.k_proj.bias'],
  ['v_bias', 'self_attn.v_proj.bias'],
  ['o_bias', 'self_attn.o_proj.bias'],
  ['q_norm', 'self_attn.q_norm.weight'],
  ['k_norm', 'self_attn.k_norm.weight'],
];

export function mergedModel(plan: MergePlan, gates: GateTensor): MoeModel {
  const byName = new Map(plan.tensors.map((t) => [t.name, t]));
  const pool = new ChunkPool(16 << 20);
  const produce = tensorProducer(gates, pool);
  const c = plan.config;
  const type = typeof c.model_type === 'string' ? ATTENTION_TYPE[c.model_type] : undefined;
  if (!type) throw new ForgeError('bad_plan', `model_type ${JSON.stringify(c.model_type)} is not an MoE architecture the report can run (mixtral, deepseek, qwen2_moe, qwen3_moe)`, { file: 'plan.json', field: 'config.model_type' });
  // The merged config as written (its sliding window, RoPE, eps) with the attention of its dense family.
  const config = parseModelConfig({ ...c, model_type: type, intermediate_size: c.intermediate_size ?? c.moe_intermediate_size }, 'plan.json (config)');
  const E = (c.num_local_experts ?? c.n_routed_experts ?? c.num_experts) as number;
  const K = c.num_experts_per_tok as number;
  if (!Number.isInteger(E) || !Number.isInteger(K) || K < 1 || K > E) throw new ForgeError('bad_plan', `the config's expert count ${E} and experts per token ${K} do not make a router`, { file: 'plan.json', field: 'config' });
  const find = (name: string): PlanTensor | undefined => byName.get(name);
  const get = (name: string): PlanTensor => {
    const t = find(name);
    if (!t) throw new ForgeError('bad_plan', `the plan has no tensor ${name}`, { file: 'plan.json', tensor: name });
    return t;
  };
  const values = async (t: PlanTensor): Promise<Weight> => {
    const bytes = Buffer.alloc(t.shape.reduce((a, b) => a * b, 1) * dtypeSize(t.dtype));
    let at = 0;
    for await (const chunk of produce(t)) {
      chunk.copy(bytes, at);
      at += chunk.length;
      pool.give(chunk);
    }
    if (at !== bytes.length) throw new Error(`internal: ${t.name} produced ${at} bytes, expected ${bytes.length}`);
    return { shape: t.shape, data: decodeFloats(bytes, t.dtype) };
  };
  // Buffers by role (the name without its layer prefix), one set per layer parity.
  const buffers: Map<string, WeightBuffer>[] = [new Map(), new Map()];
  /** `t` as float32 in its role's buffer of `set`. */
  const load = async (t: PlanTensor, set: number, role: string): Promise<Weight> => {
    if (t.dtype === 'F64') return values(t); // no float64 widening kernels; the report's models are not float64
    let slot = buffers[set]!.get(role);
    if (!slot) buffers[set]!.set(role, (slot = new WeightBuffer()));
    const n = t.shape.reduce((a, b) => a * b, 1);
    const buf = slot.floats(n);
    const all = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    // 16-bit values land in the upper half and widen in place (run.ts's WeightBuffer).
    const bytes = t.dtype === 'F32' ? all : all.subarray(2 * n);
    let at = 0;
    for (const part of t.parts) {
      if (part.kind === 'source' && !part.noise && part.scale === undefined && part.dtype === t.dtype) {
        if (at + part.byteLength > bytes.length) throw new Error(`internal: ${t.name}'s parts hold more than its ${bytes.length} bytes`);
        await readTensorInto({ ...part, name: part.tensor, begin: 0, end: part.byteLength }, bytes.subarray(at, at + part.byteLength));
        at += part.byteLength;
        continue;
      }
      for await (const chunk of produce({ ...t, parts: [part] })) {
        if (at + chunk.length > bytes.length) throw new Error(`internal: ${t.name}'s parts hold more than its ${bytes.length} bytes`);
        chunk.copy(bytes, at);
        at += chunk.length;
        pool.give(chunk);
      }
    }
    if (at !== bytes.length) throw new Error(`internal: ${t.name} produced ${at} bytes, expected ${bytes.length}`);
    if (t.dtype !== 'F32') {
      await WasmFloatBuffer.prepare();
      slot.widen(buf, t.dtype);
    }
    return { shape: t.shape, data: buf };
  };
  const slice = (w: Weight, index: number, from: number, rows: number): Weight => {
    const [, R, C] = w.shape as [number, number, number];
    return { shape: [rows, C], data: w.data.subarray((index * R + from) * C, (index * R + from + rows) * C) };
  };
  const mlpAt = async (prefix: string, names: [string, string, string], set: number, layerPrefix: string): Promise<Mlp | null> => {
    if (!find(`${prefix}.${names[0]}.weight`)) return null;
    const w = async (n: string) => load(get(`${prefix}.${n}.weight`), set, `${prefix}.${n}`.slice(layerPrefix.length));
    return { gate: await w(names[0]), up: await w(names[1]), down: await w(names[2]) };
  };
  return {
    config,
    experts: E,
    topK: K,
    // Mixtral renormalises always; the others as their config says (mergekit-moe writes true).
    normTopK: c.model_type === 'mixtral' ? true : c.norm_topk_prob === true,
    async embedRows(ids) {
      const t = get('model.embed_tokens.weight');
      const part = t.parts[0];
      if (t.parts.length === 1 && part?.kind === 'source' && !part.noise && part.scale === undefined && t.dtype !== 'F64') {
        // A copied table: only the rows used, rounded to the output dtype as the writer casts them.
        const rows = await readRows({ ...part, name: part.tensor, begin: 0, end: part.byteLength }, ids);
        for (const [id, r] of rows) rows.set(id, decodeFloats(encodeFloats(r, t.dtype as FloatDtype), t.dtype));
        return rows;
      }
      const all = await values(t);
      const H = t.shape[1]!;
      return new Map([...new Set(ids)].map((id) => [id, all.data.subarray(id * H, (id + 1) * H)]));
    },
    async layer(l) {
      const p = `model.layers.${l}`;
      const set = l % 2;
      const at = (t: PlanTensor) => load(t, set, t.name.slice(p.length));
      const attention = new Map<string, Weight>();
      for (const [role, suffix] of ATTENTION_ROLES) {
        const t = find(`${p}.${suffix}`);
        if (t) attention.set(role, await at(t));
      }
      const routerName = find(`${p}.block_sparse_moe.gate.weight`) ? `${p}.block_sparse_moe.gate.weight` : `${p}.mlp.gate.weight`;
      const router = await at(get(routerName));
      let experts: Mlp[];
      if (find(`${p}.mlp.experts.gate_up_proj`)) {
        // Fused: [E, 2I, H] with each expert's gate rows before its up rows, and [E, H, I].
        const gu = await at(get(`${p}.mlp.experts.gate_up_proj`));
        const down = await at(get(`${p}.mlp.experts.down_proj`));
        const I = gu.shape[1]! / 2;
        experts = Array.from({ length: E }, (_, e) => ({ gate: slice(gu, e, 0, I), up: slice(gu, e, I, I), down: slice(down, e, 0, down.shape[1]!) }));
      } else {
        experts = [];
        for (let e = 0; e < E; e++) {
          const m = (await mlpAt(`${p}.block_sparse_moe.experts.${e}`, ['w1', 'w3', 'w2'], set, p)) ?? (await mlpAt(`${p}.mlp.experts.${e}`, ['gate_proj', 'up_proj', 'down_proj'], set, p));
          if (!m) throw new ForgeError('bad_plan', `the plan has no weights for expert ${e} of layer ${l}`, { file: 'plan.json', tensor: `${p}.mlp.experts.${e}` });
          experts.push(m);
        }
      }
      const shared = (await mlpAt(`${p}.mlp.shared_experts`, ['gate_proj', 'up_proj', 'down_proj'], set, p)) ?? (await mlpAt(`${p}.mlp.shared_expert`, ['gate_proj', 'up_proj', 'down_proj'], set, p));
      const sg = find(`${p}.mlp.shared_expert_gate.weight`);
      return { attention, router, experts, shared, sharedGate: sg ? await at(sg) : null } satisfies MoeLayerWeights;
    },
  };
}
