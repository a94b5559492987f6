import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { describeError, ForgeError } from '../errors';
import { mergeWithOptions, reportPaths, resultLine, watchRecipe } from '../pipeline';
import { exitOnSignals } from '../util';
import { memoFile, recordNoop } from './noop-memo';
import { parseArgs } from './args';
import { checkInputFile, EVAL_PROMPTS, RECIPE } from '../input';
import { cliFlags, cliStageOptions, helpText } from '../options';

// Bundled with the command (esbuild inlines JSON), so the version is the one the code was built from.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const VERSION: string = (require('../../package.json') as { version: string }).version;

// The flags and --help come from the options table (libs/options), as Nx's stage-options.json does.
const FLAGS = cliFlags();

export { helpText };

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

const defaultIo: Io = { out: (s) => process.stdout.write(s + '\n'), err: (s) => process.stderr.write(s + '\n') };

/** `stop` ends a watching command (--watch) once no build runs; without it, a signal ends the process. */
export async function main(argv: string[], io: Io = defaultIo, stop?: AbortSignal): Promise<number> {
  // Known before parsing, so even a parse error can show its stack.
  const verbose = argv.some((a) => a === '--verbose' || /^-v+$/.test(a));
  const said = (e: unknown) => {
    io.err(`error: ${describeError(e)}`);
    if (verbose) io.err((e as Error).stack ?? String(e));
  };
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
    // What this run says besides its result: the no-op memo replays it.
    const warnings: string[] = [];
    const warn = (line: string) => {
      warnings.push(line);
      io.err(line);
    };
    if (v['trust-remote-code'] === true) {
      warn('WARNING: --trust-remote-code is refused: moe-forge never downloads or runs model code; it reads config.json and the weights only, which is all a merge needs.');
    }
    if (v['safe-serialization'] === false) throw new ForgeError('bad_flag', '--no-safe-serialization is not supported: moe-forge writes safetensors only (pickle files can run code when loaded)');
    if (v['load-in-4bit'] || v['load-in-8bit']) {
      info('--load-in-4bit/--load-in-8bit are unnecessary: hidden states are computed one decoder layer at a time, so a model larger than memory still fits; full precision is kept.');
    }
    // The shared options (seed, layout, rng, shard size and order, device, ...), checked by the options table.
    const o = cliStageOptions(v);
    const reportFile = v.report as string | undefined;
    const evalPrompts = o.evalPrompts;
    if (evalPrompts !== undefined && reportFile === undefined) throw new ForgeError('bad_flag', '--eval-prompts needs --report FILE: held-out prompts are reported, not used to build the gates', { field: '--eval-prompts' });
    if (reportFile !== undefined) reportPaths(reportFile);
    if (evalPrompts !== undefined && !existsSync(evalPrompts)) throw new ForgeError('bad_flag', '--eval-prompts: the file does not exist', { file: evalPrompts, field: '--eval-prompts' });
    if (evalPrompts !== undefined) checkInputFile(evalPrompts, EVAL_PROMPTS);
    if (o.ggufOnly && o.gguf === undefined) throw new ForgeError('bad_flag', '--gguf-only needs --gguf TYPE (f32, f16, bf16 or q8_0)', { field: '--gguf-only' });
    if (o.ggufSplitMaxSize !== undefined && o.gguf === undefined) throw new ForgeError('bad_flag', '--gguf-split-max-size needs --gguf TYPE (f32, f16, bf16 or q8_0)', { field: '--gguf-split-max-size' });
    const device = v.device !== undefined ? o.device : v.cuda || v['gpu-rich'] ? 'cuda' : 'cpu';
    const watching = v.watch === true;
    // One build: the whole merge, and its result line (with its time when watching: each edit's build says it).
    const build = async () => {
      const t0 = performance.now();
      // Every option of the table as cliStageOptions parsed it (the device also from --cuda/--gpu-rich).
      const result = await mergeWithOptions(
        {
          recipeFile: resolve(config),
          outPath: resolve(out),
          modelBaseDir: process.cwd(),
          writeRecipe: v['write-model-card'] !== false,
          log: info,
          debug: ((v.verbose as number) ?? 0) > 1 ? (s) => io.err(`debug: ${s}`) : undefined,
          warn: (s) => warn(`WARNING: ${s}`),
          report: reportFile !== undefined ? { file: resolve(reportFile), evalPrompts: evalPrompts !== undefined ? resolve(evalPrompts) : undefined } : undefined,
        },
        { ...o, device },
      );
      io.out(resultLine(result, result.outPath, watching ? (performance.now() - t0) / 1000 : undefined));
      // The next identical command answers before loading the merge (noop-memo.ts): only for local model folders
      // (a Hub reference may resolve differently later) and without a report (its files are rewritten each run).
      if (!watching && reportFile === undefined && result.models.every((m) => m.local)) {
        const files = [resolve(config), __filename];
        recordNoop(memoFile(argv), { files, dirs: [...new Set(result.models.map((m) => m.dir)), resolve(out)] }, warnings, resultLine({ ...result, skipped: true }, result.outPath));
      }
    };
    if (!watching) {
      await build();
      return 0;
    }
    // A failed build is said and the watch goes on: the next save may fix it.
    if (!stop) exitOnSignals();
    const also = evalPrompts !== undefined ? [resolve(evalPrompts)] : [];
    await watchRecipe(resolve(config), process.cwd(), { device, forwardPrecision: o.forwardPrecision }, () => build().catch(said), { say: io.err, signal: stop, also });
    return 0;
  } catch (e) {
    said(e);
    return 1;
  }
}
