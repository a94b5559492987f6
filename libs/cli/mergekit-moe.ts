import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { describeError, ForgeError } from '../errors';
import { mergeRecipe, reportPaths, DEFAULT_SHARD_BYTES } from '../stages/merge';
import { checkSeed, checkShardSize, parseArgs, type FlagSpec } from './args';
import { checkInputFile, EVAL_PROMPTS, RECIPE } from '../input';
import { SHARD_ORDERS, type ShardOrder } from '../plan/types';
import { parseGgufType } from '../gguf';

// Bundled with the command (esbuild inlines JSON), so the version is the one the code was built from.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const VERSION: string = (require('../../package.json') as { version: string }).version;

const FLAGS: FlagSpec[] = [
  { name: 'out-shard-size', kind: 'value', help: 'Maximum shard size in bytes; k/m/b suffixes (default 5B).' },
  { name: 'shard-order', kind: 'value', help: 'grouped (default: routers, base and each expert in shards of their own, so an edit rewrites only its shards) or reference (the reference\'s file split).' },
  { name: 'random-seed', kind: 'value', help: 'Seed for random gates and expert noise (default 0: runs are reproducible).' },
  { name: 'rng', kind: 'value', help: "Random gates and noise: stream (default; per tensor) or torch (PyTorch's CPU generator: the reference's output for the same seed)." },
  { name: 'i-understand-this-is-not-useful-without-training', kind: 'bool', help: 'Allow experts that are all the same model.' },
  { name: 'copy-tokenizer', kind: 'negatable', help: "Save the base model's tokenizer to the output (default on)." },
  { name: 'write-model-card', kind: 'negatable', help: 'Write mergekit_moe_config.yml (default on).' },
  { name: 'device', kind: 'value', help: 'Execution provider for hidden-state gates: cpu (default), cuda, webgpu or auto.' },
  { name: 'cuda', kind: 'negatable', help: 'Same as --device cuda.' },
  { name: 'load-in-4bit', kind: 'bool', noEffect: true, help: 'Accepted; unnecessary: the forward pass holds one layer at a time.' },
  { name: 'load-in-8bit', kind: 'bool', noEffect: true, help: 'Accepted; unnecessary: the forward pass holds one layer at a time.' },
  { name: 'layout', kind: 'value', help: 'Expert tensor layout: classic (per-expert, default) or fused (transformers 5).' },
  { name: 'report', kind: 'value', help: 'Write the routing report: FILE.html and FILE.json (which expert each prompt reaches, per layer).' },
  { name: 'eval-prompts', kind: 'value', help: 'Held-out prompts for the report: YAML list of {expert, prompts} or JSONL {"expert", "prompt"}.' },
  { name: 'gguf', kind: 'value', help: 'Also write OUT/model-TYPE.gguf for llama.cpp: TYPE f32, f16, bf16 or q8_0 (as its convert_hf_to_gguf.py writes it).' },
  { name: 'gguf-only', kind: 'bool', help: 'With --gguf: write the GGUF instead of the safetensors shards (config, tokenizer and card are still written).' },
  { name: 'overwrite', kind: 'bool', help: 'Replace an existing non-empty output folder that moe-forge did not write.' },
  { name: 'recompute', kind: 'bool', help: 'Reuse nothing: prompt states and content ids are computed again (the cache is refreshed) and every output file is written again.' },
  { name: 'verbose', kind: 'count', short: 'v', help: 'More output (-v info, -vv debug).' },
  { name: 'help', kind: 'bool', short: 'h', help: 'Show this help.' },
  { name: 'version', kind: 'bool', help: 'Print the version of moe-forge and exit.' },
  { name: 'trust-remote-code', kind: 'negatable', help: 'Accepted and refused: model code is never run.' },
  { name: 'clone-tensors', kind: 'negatable', noEffect: true, help: 'No effect (output is identical).' },
  { name: 'lazy-unpickle', kind: 'negatable', noEffect: true, help: 'No effect (.bin files are always read lazily and safely).' },
  { name: 'safe-serialization', kind: 'negatable', help: 'Output is always safetensors; --no-safe-serialization is refused.' },
  { name: 'num-threads', kind: 'value', short: 'j', noEffect: true, help: 'No effect.' },
  { name: 'transformers-cache', kind: 'value', noEffect: true, help: 'No effect (the Hugging Face cache is HF_HUB_CACHE / HF_HOME).' },
  { name: 'async-write', kind: 'negatable', noEffect: true, help: 'No effect (output is identical).' },
  { name: 'write-threads', kind: 'value', noEffect: true, help: 'No effect.' },
  { name: 'allow-crimes', kind: 'negatable', noEffect: true, help: 'No effect for MoE merges.' },
  { name: 'lora-merge-cache', kind: 'value', noEffect: true, help: 'No effect for MoE merges.' },
  { name: 'lora-merge-dtype', kind: 'value', noEffect: true, help: 'No effect for MoE merges.' },
  { name: 'low-cpu-memory', kind: 'negatable', noEffect: true, help: 'No effect: memory is bounded by one tensor anyway.' },
  { name: 'quiet', kind: 'negatable', noEffect: true, help: 'No effect.' },
  { name: 'read-to-gpu', kind: 'negatable', noEffect: true, help: 'No effect.' },
  { name: 'multi-gpu', kind: 'negatable', noEffect: true, help: 'No effect.' },
  { name: 'gpu-rich', kind: 'negatable', noEffect: true, help: 'Same as --device cuda.' },
];

export function helpText(): string {
  const lines = FLAGS.map((f) => {
    const flag = f.kind === 'negatable' ? `--${f.name}/--no-${f.name}` : `--${f.name}${f.kind === 'value' ? ' VALUE' : ''}${f.short ? `, -${f.short}` : ''}`;
    return `  ${flag.padEnd(54)} ${f.help}`;
  });
  return `Usage: mergekit-moe CONFIG_PATH OUT_PATH [options]\n\nMerge dense models into a Mixture-of-Experts checkpoint from a mergekit-moe YAML recipe.\n\nOptions:\n${lines.join('\n')}\n`;
}

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

const defaultIo: Io = { out: (s) => process.stdout.write(s + '\n'), err: (s) => process.stderr.write(s + '\n') };

export async function main(argv: string[], io: Io = defaultIo): Promise<number> {
  // Known before parsing, so even a parse error can show its stack.
  const verbose = argv.some((a) => a === '--verbose' || /^-v+$/.test(a));
  try {
    const args = parseArgs(argv, FLAGS);
    const v = args.values;
    if (v.help) {
      io.out(helpText());
      return 0;
    }
    if (v.version) {
      io.out(`mergekit-moe (moe-forge) ${VERSION}`);
      return 0;
    }
    if (args.positionals.length !== 2) {
      throw new ForgeError('usage', `expected CONFIG_PATH and OUT_PATH, got ${args.positionals.length} argument(s)\n\n${helpText()}`);
    }
    const [config, out] = args.positionals as [string, string];
    if (!existsSync(config)) throw new ForgeError('usage', 'CONFIG_PATH does not exist', { file: config });
    checkInputFile(config, RECIPE);
    const info = ((v.verbose as number) ?? 0) > 0 ? io.err : () => undefined;
    for (const name of new Set(args.given)) {
      const spec = FLAGS.find((f) => f.name === name)!;
      if (spec.noEffect) info(`--${name} has no effect in moe-forge: ${spec.help}`);
    }
    if (v['trust-remote-code'] === true) {
      io.err('WARNING: --trust-remote-code is refused: moe-forge never downloads or runs model code; it reads config.json and the weights only, which is all a merge needs.');
    }
    if (v['safe-serialization'] === false) throw new ForgeError('bad_flag', '--no-safe-serialization is not supported: moe-forge writes safetensors only (pickle files can run code when loaded)');
    if (v['load-in-4bit'] || v['load-in-8bit']) {
      info('--load-in-4bit/--load-in-8bit are unnecessary: hidden states are computed one decoder layer at a time, so a model larger than memory still fits; full precision is kept.');
    }
    const layout = (v.layout as string | undefined) ?? 'classic';
    if (layout !== 'classic' && layout !== 'fused') throw new ForgeError('bad_flag', `--layout must be classic or fused, got "${layout}"`, { field: '--layout' });
    const rng = (v.rng as string | undefined) ?? 'stream';
    if (rng !== 'stream' && rng !== 'torch') throw new ForgeError('bad_flag', `--rng must be stream or torch, got "${rng}"`, { field: '--rng' });
    const shardOrder = (v['shard-order'] as string | undefined) ?? 'grouped';
    if (!(SHARD_ORDERS as readonly string[]).includes(shardOrder)) throw new ForgeError('bad_flag', `--shard-order must be grouped or reference, got "${shardOrder}"`, { field: '--shard-order' });
    const seed = v['random-seed'] !== undefined ? checkSeed(v['random-seed']) : 0;
    const maxShardBytes = v['out-shard-size'] !== undefined ? checkShardSize(v['out-shard-size']) : DEFAULT_SHARD_BYTES;
    const reportFile = v.report as string | undefined;
    const evalPrompts = v['eval-prompts'] as string | undefined;
    if (evalPrompts !== undefined && reportFile === undefined) throw new ForgeError('bad_flag', '--eval-prompts needs --report FILE: held-out prompts are reported, not used to build the gates', { field: '--eval-prompts' });
    if (reportFile !== undefined) reportPaths(reportFile);
    if (evalPrompts !== undefined && !existsSync(evalPrompts)) throw new ForgeError('bad_flag', '--eval-prompts: the file does not exist', { file: evalPrompts, field: '--eval-prompts' });
    if (evalPrompts !== undefined) checkInputFile(evalPrompts, EVAL_PROMPTS);
    const device = (v.device as string | undefined) ?? (v.cuda || v['gpu-rich'] ? 'cuda' : 'cpu');
    const gguf = v.gguf !== undefined ? parseGgufType(String(v.gguf), { field: '--gguf' }) : undefined;
    if (v['gguf-only'] === true && gguf === undefined) throw new ForgeError('bad_flag', '--gguf-only needs --gguf TYPE (f32, f16, bf16 or q8_0)', { field: '--gguf-only' });
    const result = await mergeRecipe({
      recipeFile: resolve(config),
      outPath: resolve(out),
      modelBaseDir: process.cwd(),
      seed,
      rng,
      layout,
      maxShardBytes,
      shardOrder: shardOrder as ShardOrder,
      allowIdenticalModels: v['i-understand-this-is-not-useful-without-training'] === true,
      copyTokenizer: v['copy-tokenizer'] !== false,
      writeRecipe: v['write-model-card'] !== false,
      overwrite: v.overwrite === true,
      recompute: v.recompute === true,
      gguf,
      ggufOnly: v['gguf-only'] === true,
      device,
      log: info,
      debug: ((v.verbose as number) ?? 0) > 1 ? (s) => io.err(`debug: ${s}`) : undefined,
      warn: (s) => io.err(`WARNING: ${s}`),
      report: reportFile !== undefined ? { file: resolve(reportFile), evalPrompts: evalPrompts !== undefined ? resolve(evalPrompts) : undefined } : undefined,
    });
    io.out(`${result.skipped ? 'unchanged' : 'wrote'} ${result.outPath} (${result.shards} shard${result.shards === 1 ? '' : 's'})`);
    return 0;
  } catch (e) {
    io.err(`error: ${describeError(e)}`);
    if (verbose) io.err((e as Error).stack ?? String(e));
    return 1;
  }
}
