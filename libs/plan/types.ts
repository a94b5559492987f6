/** plan.json: every output tensor in write order, with where its bytes come from. */

import type { FloatDtype, WeightDtype } from '../safetensors';

export interface NoiseTransform {
  scale: number;
  /** Named stream of our seeded generator, so each tensor's noise is independent of write order. */
  stream: string;
  seed: number;
  /**
   * rng torch: the state of PyTorch's generator when the reference draws this tensor's `randn_like`
   * (32-bit words drawn since the seed, and the normal its small-draw path holds), so the noise depends
   * on every draw before it, as in the reference.
   */
  torch?: { offset: number; cachedNormal: number | null };
}

export interface SourcePart {
  kind: 'source';
  /** Key of the model in the plan's model table. */
  model: string;
  tensor: string;
  file: string;
  offset: number;
  byteLength: number;
  dtype: WeightDtype;
  shape: number[];
  noise?: NoiseTransform;
  /** Multiply by this after noise (residual_scale on down_proj). */
  scale?: number;
}

export interface GatePart {
  kind: 'gates';
  layer: number;
  /** Rows of the gate tensor G[layer] to emit, in order. */
  rows: number[];
}

export interface ZerosPart {
  kind: 'zeros';
  elements: number;
}

export type PlanPart = SourcePart | GatePart | ZerosPart;

export interface PlanTensor {
  name: string;
  dtype: WeightDtype;
  shape: number[];
  parts: PlanPart[];
  /**
   * What the tensor's bytes change with, so the grouped shard order keeps each group in shards of its own:
   * 'router' (gates, Qwen's shared_expert_gate), 'base', 'expert/<i>', 'shared/<i>', 'experts' (fused stacks).
   */
  group: string;
}

/** 'grouped': routers, then base, then each expert, each group in shards of its own; 'reference': the reference's split. */
export type ShardOrder = 'grouped' | 'reference';
export const SHARD_ORDERS: readonly ShardOrder[] = ['grouped', 'reference'];

export interface PlanModel {
  key: string;
  ref: string;
  dir: string;
  contentId?: string;
}

export interface MergePlan {
  version: 1;
  architecture: string;
  layout: 'classic' | 'fused';
  outDtype: FloatDtype | null;
  config: Record<string, unknown>;
  /**
   * How each number of `config` is written, by JSON path (libs/json pathKey): the base's literal when copied
   * unchanged, else as the output's config class types it, so config.json says `0.0` where transformers wants a float.
   */
  configNumbers?: Record<string, string>;
  models: PlanModel[];
  tensors: PlanTensor[];
  maxShardBytes: number;
  shardOrder: ShardOrder;
  warnings: string[];
}
