/**
 * A one-layer, two-expert Mixtral plan over a random bf16 source file, small enough for unit tests of the write
 * stage's manifest and of the GGUF pass: q/k rows to permute, expert stacks, a router of gate rows, norms.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { newGates, type GateTensor } from '../../libs/gates';
import type { MergePlan, PlanTensor } from '../../libs/plan/types';

const H = 32;
const I = 64;
const V = 512; // the tiny-llama fixtures' tokenizer

/** Normal-ish float32 values rounded to bf16, deterministic per seed. */
function bf16Values(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n * 2);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    const f = new Float32Array([((s / 2 ** 32) - 0.5) * 0.2]);
    b.writeUInt16LE(new Uint32Array(f.buffer)[0]! >>> 16, i * 2);
  }
  return b;
}

export function mixtralPlan(dir: string, opts: { maxShardBytes?: number } = {}): MergePlan {
  const file = join(dir, 'source.bin');
  const shapes: [string, number[], string][] = [
    ['model.embed_tokens.weight', [V, H], 'base'],
    ['model.layers.0.input_layernorm.weight', [H], 'base'],
    ['model.layers.0.self_attn.q_proj.weight', [H, H], 'base'],
    ['model.layers.0.self_attn.k_proj.weight', [H / 2, H], 'base'],
    ['model.layers.0.self_attn.v_proj.weight', [H / 2, H], 'base'],
    ['model.layers.0.self_attn.o_proj.weight', [H, H], 'base'],
    ['model.layers.0.post_attention_layernorm.weight', [H], 'base'],
    ...[0, 1].flatMap((e) => [
      [`model.layers.0.block_sparse_moe.experts.${e}.w1.weight`, [I, H], `expert/${e}`],
      [`model.layers.0.block_sparse_moe.experts.${e}.w2.weight`, [H, I], `expert/${e}`],
      [`model.layers.0.block_sparse_moe.experts.${e}.w3.weight`, [I, H], `expert/${e}`],
    ] as [string, number[], string][]),
    ['model.norm.weight', [H], 'base'],
    ['lm_head.weight', [V, H], 'base'],
  ];
  const tensors: PlanTensor[] = [];
  const data: Buffer[] = [];
  let offset = 0;
  for (const [i, [name, shape, group]] of shapes.entries()) {
    const n = shape.reduce((a, b) => a * b, 1);
    data.push(bf16Values(n, i + 7));
    tensors.push({ name, dtype: 'BF16', shape, group, parts: [{ kind: 'source', model: 'k', tensor: name, file, offset, byteLength: n * 2, dtype: 'BF16', shape }] });
    offset += n * 2;
    if (name.endsWith('post_attention_layernorm.weight')) {
      tensors.push({ name: 'model.layers.0.block_sparse_moe.gate.weight', dtype: 'F32', shape: [2, H], group: 'router', parts: [{ kind: 'gates', layer: 0, rows: [0, 1] }] });
    }
  }
  writeFileSync(file, Buffer.concat(data));
  return {
    version: 1,
    architecture: 'Mixtral',
    layout: 'classic',
    outDtype: null,
    config: { architectures: ['MixtralForCausalLM'], model_type: 'mixtral', hidden_size: H, intermediate_size: I, num_attention_heads: 4, num_key_value_heads: 2, num_hidden_layers: 1, num_local_experts: 2, num_experts_per_tok: 2, vocab_size: V, rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 128 },
    models: [{ key: 'k', ref: 'base', dir, contentId: 'content-of-base' }],
    tensors,
    maxShardBytes: opts.maxShardBytes ?? 1,
    shardOrder: 'grouped',
    warnings: [],
  } as MergePlan;
}

/** Router rows: 0.01·(i + seed) for every element i. */
export function gatesOf(seed: number): GateTensor {
  const g = newGates(1, 2, H);
  for (let i = 0; i < g.data.length; i++) g.data[i] = 0.01 * (i + seed);
  return g;
}
