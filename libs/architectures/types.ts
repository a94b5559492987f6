import type { ModelConfig } from '../model-folder';
import type { TensorIndex } from '../safetensors';
import type { Expert, Recipe } from '../recipe';
import type { GateMode } from '../gates';
import type { FloatDtype } from '../safetensors';
import type { PlanTensor } from '../plan';

export interface ModelSource {
  key: string;
  /** The reference as the user wrote it, for messages. */
  ref: string;
  dir: string;
  config: ModelConfig;
  /** A merge reads tensors by name only (a folder's index, or headers seen over HTTP). */
  weights: Pick<TensorIndex, 'has' | 'get'>;
  contentId?: string;
}

export interface ExpertSource {
  spec: Expert;
  model: ModelSource;
  /** Position among routed experts, or among shared experts. */
  index: number;
  shared: boolean;
}

export interface ArchContext {
  recipe: Recipe;
  gateMode: GateMode;
  base: ModelSource;
  experts: ExpertSource[];
  shared: ExpertSource[];
  /** Output dtype (safetensors name) or null to keep each source's dtype. */
  outDtype: FloatDtype | null;
  layout: 'classic' | 'fused';
  seed: number;
  /** Random draws: our per-tensor streams (default), or PyTorch's generator in the reference's order. */
  rng?: RngKind;
}

export type RngKind = 'stream' | 'torch';

/**
 * The order in which the reference draws expert noise within a layer (mergekit's main branch): per expert, its
 * projections in `projs` order; or per projection, every routed expert then the shared ones.
 */
export interface NoiseDrawOrder {
  perExpert: boolean;
  projs: readonly ('gate_proj' | 'up_proj' | 'down_proj')[];
}

export interface OutputArchitecture {
  /** The reference's name(), matched by case-insensitive prefix against `architecture`. */
  name: string;
  /** Null when this architecture can be written from these inputs, else why not. */
  rejects(ctx: ArchContext): string | null;
  /** Which shared experts get a gate row (appended after the routed experts' rows). */
  gatedSharedExperts(ctx: ArchContext): number;
  /** Whether the fused (transformers 5) expert layout exists for this architecture. */
  fusedLayout: boolean;
  /** Whether llama.cpp's convert_hf_to_gguf.py reads the fused layout of this architecture. */
  llamaCppReadsFused: boolean;
  /** Where `rng: torch` takes each noised tensor's draw from the reference's one generator. */
  noiseDrawOrder: NoiseDrawOrder;
  config(ctx: ArchContext): Record<string, unknown>;
  /** Top-level config keys the consumer's config class types as float (written `0.0`, never `0`). */
  floatKeys: readonly string[];
  /** Every output tensor in write order. */
  tensors(ctx: ArchContext): PlanTensor[];
}
