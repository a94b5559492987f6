import type { RngKind } from '../architectures';
import type { Device, ForwardPrecision } from '../forward';
import type { MergePlan, ShardOrder } from '../plan';
import { GGUF_TYPES } from '../gguf';

/**
 * Every option of the two front ends, once: its Nx name, its type and default, its description, how the
 * `mergekit-moe` command spells it, and which stages' results it changes. stage-options.json (Nx's schema), the
 * command's flags and --help, and the executors' parsing are all made from this table (see schema.ts).
 */

/** The stages, in the order the plugin chains them (report beside assemble-experts, after build-gates). */
export const OPTION_STAGES = ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report', 'write'] as const;
export type OptionStage = (typeof OPTION_STAGES)[number];

export const LAYOUTS = ['classic', 'fused'] as const satisfies readonly MergePlan['layout'][];
export type Layout = (typeof LAYOUTS)[number];
export const RNGS = ['stream', 'torch'] as const satisfies readonly RngKind[];
export const SHARD_ORDER_NAMES = ['grouped', 'reference'] as const satisfies readonly ShardOrder[];
export const DEVICE_NAMES = ['cpu', 'cuda', 'webgpu', 'auto'] as const satisfies readonly (Device | 'auto')[];
export type DeviceChoice = (typeof DEVICE_NAMES)[number];
export const FORWARD_PRECISIONS = ['fp32', 'int8', 'bf16'] as const satisfies readonly ForwardPrecision[];

/** mergekit-moe's default --out-shard-size (5B), in bytes. */
export const DEFAULT_SHARD_BYTES = 5_000_000_000;

/** How the command spells an option: a flag taking a value, a switch, a switch with a --no- form, or a counter. */
export interface CliSpelling {
  flag: string;
  kind: 'value' | 'bool' | 'negatable' | 'count';
  short?: string;
  /** The help line, where the command's wording differs from the description (mergekit-moe's own flags). */
  help?: string;
}

interface Common {
  description: string;
  /** The stages whose results the option changes (what their cache must hash). */
  stages: readonly OptionStage[];
  /** The stages that read it without their result depending on it (a location, a cache folder, a check). */
  reads?: readonly OptionStage[];
  /**
   * True: every task reads it before its slice (which recipe, where the stage folders are), so the recipe stage
   * never hands it on through one.
   */
  beforeSlice?: true;
  /** The command's spelling; absent: Nx only. */
  cli?: CliSpelling;
  /** False: the command only (not in stage-options.json). */
  nx?: false;
  /** Accepted by the command for mergekit-moe's sake, with no effect here (said with -v). */
  noEffect?: true;
  /**
   * The library's (`mergeRecipe`'s) name for it where that differs from the Nx name; false: not one of its
   * options (it takes the recipe, output and report otherwise). Absent: the same name.
   */
  api?: string | false;
}

export type OptionSpec =
  | (Common & { type: 'string' })
  | (Common & { type: 'boolean'; default: boolean })
  | (Common & { type: 'enum'; values: readonly [string, ...string[]]; default?: string })
  | (Common & { type: 'seed'; default: number })
  | (Common & { type: 'size'; default?: number; min?: number })
  | (Common & { type: 'count' });

const ALL = OPTION_STAGES;
const NO_EFFECT = 'No effect.';

/** The options with an Nx name. The command's other flags follow in CLI_ONLY. */
export const OPTIONS = {
  recipe: {
    type: 'string',
    stages: ALL,
    beforeSlice: true,
    api: false,
    description: 'Recipe file, relative to the project root: moe.yml, the file Nx hashes as the recipe (another file is refused, since Nx would not see its edits).',
  },
  outputPath: {
    type: 'string',
    stages: ['write'],
    reads: ['fetch'],
    api: false,
    description: "Model folder to write, relative to the workspace (default dist/models/<project>, or the plugin's modelsDir).",
  },
  stagesDir: {
    type: 'string',
    stages: [],
    reads: ALL,
    beforeSlice: true,
    api: false,
    description: "Folder of this recipe's stage outputs, relative to the workspace (default dist/stages/<project>, or the plugin's stagesDir).",
  },
  randomSeed: {
    type: 'seed',
    default: 0,
    stages: ['assemble-experts', 'report'],
    api: 'seed',
    description: 'Seed (an integer >= 0) for random and uniform_random gates and for expert noise.',
    cli: { flag: 'random-seed', kind: 'value', help: 'Seed for random gates and expert noise (default 0: runs are reproducible).' },
  },
  rng: {
    type: 'enum',
    values: RNGS,
    default: 'stream',
    stages: ['assemble-experts', 'report'],
    description: "Random draws: stream (one seeded stream per random tensor, edits redraw only what they change) or torch (mergekit-moe's own PyTorch draws, bit for bit).",
    cli: { flag: 'rng', kind: 'value', help: "Random gates and noise: stream (default; per tensor) or torch (PyTorch's CPU generator: the reference's output for the same seed)." },
  },
  layout: {
    type: 'enum',
    values: LAYOUTS,
    default: 'classic',
    stages: ['assemble-experts'],
    description: 'Expert tensor layout: classic (one tensor per expert) or fused (experts stacked, where the architecture has such a layout).',
    cli: { flag: 'layout', kind: 'value', help: 'Expert tensor layout: classic (per-expert, default) or fused (transformers 5).' },
  },
  outShardSize: {
    type: 'size',
    default: DEFAULT_SHARD_BYTES,
    stages: ['assemble-experts'],
    api: 'maxShardBytes',
    description: 'Largest output shard in bytes: a positive integer, or a number with a k, m or b suffix (500m, 5B).',
    cli: { flag: 'out-shard-size', kind: 'value', help: 'Maximum shard size in bytes; k/m/b suffixes (default 5B).' },
  },
  shardOrder: {
    type: 'enum',
    values: SHARD_ORDER_NAMES,
    default: 'grouped',
    stages: ['assemble-experts'],
    description: "Shard layout: grouped (routers, base and each expert in shards of their own, so an edit rewrites only its shards) or reference (mergekit-moe's file split).",
    cli: { flag: 'shard-order', kind: 'value', help: "grouped (default: routers, base and each expert in shards of their own, so an edit rewrites only its shards) or reference (the reference's file split)." },
  },
  device: {
    type: 'enum',
    values: DEVICE_NAMES,
    default: 'cpu',
    stages: ['embed-prompts', 'report'],
    reads: ['assemble-experts'],
    description: 'Execution provider of the forward pass for hidden-state gates (embed-prompts): cpu, cuda, webgpu or auto (the GPU when there is one).',
    cli: { flag: 'device', kind: 'value', help: 'Execution provider for hidden-state gates: cpu (default), cuda, webgpu or auto.' },
  },
  forwardPrecision: {
    type: 'enum',
    values: FORWARD_PRECISIONS,
    default: 'fp32',
    stages: ['embed-prompts'],
    description: "Arithmetic of the forward pass for hidden-state gates (embed-prompts): fp32 (default, exact), bf16 (on CPUs with AVX512-BF16: the projections multiply the stored bf16 weights by activations rounded to bf16 and sum in float32, about twice onnxruntime's float32 rate; approximate: normalised gate rows ~7e-4 off fp32's at hidden 1024 and ~1e-2 at 2048, half the reference tool's own bf16 deviation there; cached apart) or int8 (experimental: 8-bit weights and activations through onnxruntime's MatMulNBits; approximate: normalised gate rows ~3e-3 off fp32's at hidden 1024, ~4e-2 at 2048, and not faster on the CPUs measured; cached apart).",
    cli: { flag: 'forward-precision', kind: 'value', help: 'Forward-pass arithmetic for hidden-state gates: fp32 (default, exact), bf16 (AVX512-BF16 CPUs, faster, approximate) or int8 (experimental, approximate).' },
  },
  overwrite: {
    type: 'boolean',
    default: false,
    stages: ['write'],
    reads: ['fetch'],
    description: 'Replace an output folder that moe-forge did not write.',
    cli: { flag: 'overwrite', kind: 'bool', help: 'Replace an existing non-empty output folder that moe-forge did not write.' },
  },
  recompute: {
    type: 'boolean',
    default: false,
    stages: [],
    reads: ['fetch', 'embed-prompts', 'report', 'write'],
    description: 'Reuse nothing: with --skip-nx-cache, every stage runs, prompt states and content ids are computed again (the prompt-state cache is refreshed) and every output file is written again.',
    cli: { flag: 'recompute', kind: 'bool', help: 'Reuse nothing: prompt states and content ids are computed again (the cache is refreshed) and every output file is written again.' },
  },
  allowIdenticalModels: {
    type: 'boolean',
    default: false,
    stages: [],
    // Every stage that opens the merge context checks the recipe again with it.
    reads: ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report'],
    description: "Allow experts identical to each other (the reference's --i-understand-this-is-not-useful-without-training).",
    cli: { flag: 'i-understand-this-is-not-useful-without-training', kind: 'bool', help: 'Allow experts that are all the same model.' },
  },
  copyTokenizer: {
    type: 'boolean',
    default: true,
    stages: ['write'],
    description: "Copy the base model's tokenizer into the output.",
    cli: { flag: 'copy-tokenizer', kind: 'negatable', help: "Save the base model's tokenizer to the output (default on)." },
  },
  gguf: {
    type: 'enum',
    values: GGUF_TYPES,
    stages: ['write'],
    description: 'Also write model-TYPE.gguf into the model folder for llama.cpp (as its convert_hf_to_gguf.py writes it at that outtype).',
    cli: { flag: 'gguf', kind: 'value', help: 'Also write OUT/model-TYPE.gguf for llama.cpp: TYPE f32, f16, bf16 or q8_0 (as its convert_hf_to_gguf.py writes it).' },
  },
  ggufOnly: {
    type: 'boolean',
    default: false,
    stages: ['write'],
    description: 'With gguf: write the GGUF instead of the safetensors shards (config, tokenizer and card are still written).',
    cli: { flag: 'gguf-only', kind: 'bool', help: 'With --gguf: write the GGUF instead of the safetensors shards (config, tokenizer and card are still written).' },
  },
  ggufSplitMaxSize: {
    type: 'size',
    min: 1,
    stages: ['write'],
    api: 'ggufSplitBytes',
    description: "With gguf: split it as llama.cpp's gguf-split does, into model-TYPE-00001-of-0000N.gguf files: the metadata and the routers in the first (a prompt edit rewrites it alone), the other tensors in files of at most this many bytes (k, m, b or g suffixes: 20g; the Hub takes no file over 50 GB). llama.cpp loads the first file; Ollama does not load split GGUFs.",
    cli: { flag: 'gguf-split-max-size', kind: 'value', help: 'With --gguf: split it into files of at most this size (k/m/b/g suffixes), the routers and metadata in the first (llama.cpp loads splits; Ollama does not).' },
  },
  cacheDir: {
    type: 'string',
    stages: [],
    // Every stage after fetch downloads a Hub model missing from this machine through it.
    reads: ALL,
    description: 'Prompt-state and content-id cache folder (default $MOE_FORGE_CACHE, else .moe-cache in the workspace).',
  },
  evalPrompts: {
    type: 'string',
    stages: ['report'],
    // fetch and write check that the output folder does not hold it.
    reads: ['fetch', 'write'],
    // The library takes it with the report it is for (`report.evalPrompts`).
    api: false,
    description:
      'Held-out prompts for the report target: a .yml/.yaml list of {expert, prompts} or a .jsonl file of {"expert", "prompt"} lines, relative to the recipe\'s folder and inside it by its real path, not git-ignored (so Nx sees its edits; otherwise it is refused).',
    cli: { flag: 'eval-prompts', kind: 'value', help: 'Held-out prompts for the report: YAML list of {expert, prompts} or JSONL {"expert", "prompt"}.' },
  },
} as const satisfies Record<string, OptionSpec>;

const noEffect = (flag: string, kind: 'value' | 'bool' | 'negatable', description = NO_EFFECT, short?: string): OptionSpec => {
  const common = { nx: false, stages: [], description, noEffect: true, cli: { flag, kind, ...(short ? { short } : {}) } } as const;
  return kind === 'value' ? { type: 'string', ...common } : { type: 'boolean', default: false, ...common };
};

/**
 * The command's other flags, in --help's order after the shared ones: mergekit-moe's own (a report file, the
 * model card, verbosity) and those it accepts with no effect here (`noEffect`: said with -v).
 */
export const CLI_ONLY: Record<string, OptionSpec> = {
  writeModelCard: { type: 'boolean', default: true, nx: false, stages: ['write'], description: 'Write mergekit_moe_config.yml (default on).', cli: { flag: 'write-model-card', kind: 'negatable' } },
  cuda: { type: 'boolean', default: false, nx: false, stages: ['embed-prompts', 'report'], description: 'Same as --device cuda.', cli: { flag: 'cuda', kind: 'negatable' } },
  loadIn4bit: noEffect('load-in-4bit', 'bool', 'Accepted; unnecessary: the forward pass holds one layer at a time.'),
  loadIn8bit: noEffect('load-in-8bit', 'bool', 'Accepted; unnecessary: the forward pass holds one layer at a time.'),
  report: { type: 'string', nx: false, stages: ['report'], description: 'Write the routing report: FILE.html and FILE.json (which expert each prompt reaches, per layer).', cli: { flag: 'report', kind: 'value' } },
  verbose: { type: 'count', nx: false, stages: [], description: 'More output (-v info, -vv debug).', cli: { flag: 'verbose', kind: 'count', short: 'v' } },
  watch: { type: 'boolean', default: false, nx: false, stages: [], description: 'Build, then build again each time CONFIG (or the --eval-prompts file) is saved, until Ctrl-C; between builds a forward worker waits with the base model set up.', cli: { flag: 'watch', kind: 'bool' } },
  help: { type: 'boolean', default: false, nx: false, stages: [], description: 'Show this help.', cli: { flag: 'help', kind: 'bool', short: 'h' } },
  version: { type: 'boolean', default: false, nx: false, stages: [], description: 'Print the version of moe-forge and exit.', cli: { flag: 'version', kind: 'bool' } },
  trustRemoteCode: { type: 'boolean', default: false, nx: false, stages: [], description: 'Accepted and refused: model code is never run.', cli: { flag: 'trust-remote-code', kind: 'negatable' } },
  cloneTensors: noEffect('clone-tensors', 'negatable', 'No effect (output is identical).'),
  lazyUnpickle: noEffect('lazy-unpickle', 'negatable', 'No effect (.bin files are always read lazily and safely).'),
  safeSerialization: { type: 'boolean', default: true, nx: false, stages: [], description: 'Output is always safetensors; --no-safe-serialization is refused.', cli: { flag: 'safe-serialization', kind: 'negatable' } },
  numThreads: noEffect('num-threads', 'value', NO_EFFECT, 'j'),
  transformersCache: noEffect('transformers-cache', 'value', 'No effect (the Hugging Face cache is HF_HUB_CACHE / HF_HOME).'),
  asyncWrite: noEffect('async-write', 'negatable', 'No effect (output is identical).'),
  writeThreads: noEffect('write-threads', 'value'),
  allowCrimes: noEffect('allow-crimes', 'negatable', 'No effect for MoE merges.'),
  loraMergeCache: noEffect('lora-merge-cache', 'value', 'No effect for MoE merges.'),
  loraMergeDtype: noEffect('lora-merge-dtype', 'value', 'No effect for MoE merges.'),
  lowCpuMemory: noEffect('low-cpu-memory', 'negatable', 'No effect: memory is bounded by one tensor anyway.'),
  quiet: noEffect('quiet', 'negatable'),
  readToGpu: noEffect('read-to-gpu', 'negatable'),
  multiGpu: noEffect('multi-gpu', 'negatable'),
  gpuRich: noEffect('gpu-rich', 'negatable', 'Same as --device cuda.'),
};
