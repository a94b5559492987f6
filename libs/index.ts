// The library's entry (`require('moe-forge')`): the whole merge as one function. Its public types are declared
// here, not imported, so that the build can emit this file's .d.ts alone (scripts/build.mjs); `npm run typecheck`
// checks that they still fit the pipeline's own options.
import { resolve } from 'node:path';
import { mergeRecipe } from './pipeline';

/** Options of {@link merge}: the `mergekit-moe` command's flags, as values. */
export interface MergeOptions {
  /** The recipe: a mergekit-moe YAML file. */
  recipe: string;
  /** The output model folder. */
  out: string;
  /** Relative model paths in the recipe resolve against this (default: the working directory, as the command does). */
  modelBaseDir?: string;
  /** Seed for random gates and expert noise (default 0). */
  seed?: number;
  /** `torch`: random routers and noise as the reference draws them (PyTorch's CPU generator); default `stream`. */
  rng?: 'stream' | 'torch';
  /** Expert tensor layout: `classic` (per expert, default) or `fused` (transformers 5). */
  layout?: 'classic' | 'fused';
  /** Largest shard in bytes (default 5e9). */
  maxShardBytes?: number;
  /** `grouped` (default): routers, base and each expert in shards of their own; `reference`: the reference's split. */
  shardOrder?: 'grouped' | 'reference';
  /** Allow experts that are all the same model. */
  allowIdenticalModels?: boolean;
  /** Save the base model's tokenizer to the output (default true). */
  copyTokenizer?: boolean;
  /** Write mergekit_moe_config.yml (default true). */
  writeRecipe?: boolean;
  /** Replace an existing non-empty output folder that moe-forge did not write. */
  overwrite?: boolean;
  /** Reuse nothing: prompt states and content ids computed again, every output file written again. */
  recompute?: boolean;
  /** Also write OUT/model-TYPE.gguf for llama.cpp; `ggufOnly`: instead of the safetensors shards. */
  gguf?: 'f32' | 'f16' | 'bf16' | 'q8_0';
  ggufOnly?: boolean;
  /** With `gguf`: split it into files of at most this many bytes, the routers and metadata in the first (llama.cpp's gguf-split names and keys). */
  ggufSplitBytes?: number;
  /** Execution provider for hidden-state gates: cpu (default), cuda, webgpu or auto. */
  device?: 'cpu' | 'cuda' | 'webgpu' | 'auto';
  /** Forward-pass arithmetic for hidden-state gates: fp32 (default, exact), bf16 (AVX512-BF16 CPUs, faster, approximate) or int8 (experimental, approximate); cached apart. */
  forwardPrecision?: 'fp32' | 'int8' | 'bf16';
  /** Prompt-state cache (default $MOE_FORGE_CACHE, else ~/.cache/moe-forge). */
  cacheDir?: string;
  /** Hugging Face settings (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE); default process.env. */
  env?: Record<string, string | undefined>;
  /** Progress and information lines (default: none). */
  log?: (line: string) => void;
  warn?: (line: string) => void;
  debug?: (line: string) => void;
  /** Also write the routing report: `file` ends in .html or .json, the other goes beside it. */
  report?: { file: string; evalPrompts?: string };
}

/** What {@link merge} wrote. */
export interface MergeResult {
  /** The output folder, absolute. */
  outPath: string;
  /** The files written, relative to it. */
  files: string[];
  shards: number;
  /** Shards written now, and shards kept from the previous output. */
  written: number;
  kept: number;
  /** True when the folder already held this merge and nothing was written. */
  skipped: boolean;
  /** Content hash of the merge (the stamp's). */
  hash: string;
}

/**
 * Merges the recipe's dense models into a Mixture-of-Experts model folder, as `mergekit-moe RECIPE OUT` does.
 * Rejects with an Error whose message is one line naming the file, field or tensor at fault.
 */
export async function merge(options: MergeOptions): Promise<MergeResult> {
  const { recipe, out, modelBaseDir, ...rest } = options;
  return mergeRecipe({ ...rest, recipeFile: resolve(recipe), outPath: resolve(out), modelBaseDir: resolve(modelBaseDir ?? process.cwd()) });
}
