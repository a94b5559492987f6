/**
 * The command's first step after a missed no-op memo, before the merge's bundle loads (build/early.js): fork the
 * forward worker now when the run may need prompt states, so that it boots (node, onnxruntime) on the idle core
 * while this process loads the merge's code and reads the recipe. The merge adopts it (libs/forward/isolated.ts)
 * or ends it. The guess is cheap and only decides speed: a recipe it cannot read, or a mode it does not know,
 * forks (the merge ends the worker when it finds no pass to run).
 */
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { dropEarlyWorker, earlyWorker, forkEarlyWorker } from '../fork';
import { DEFAULT_GATE_MODE, GATE_MODES, type GateMode } from '../gates';
import { modelDirOnDisk } from '../resolve';
import { FORWARD_PRECISIONS } from '../options';

// Set by scripts/build.mjs: the built worker, relative to this bundle.
declare const __FORWARD_WORKER__: string | undefined;
const WORKER = join(__dirname, typeof __FORWARD_WORKER__ === 'string' ? __FORWARD_WORKER__ : '../forward/worker-main.ts');

/** The most of a recipe read to guess: gate_mode sits near the top of any real one. */
const HEAD_BYTES = 256 << 10;

/** A top-level `key: value` of a YAML recipe, plain or quoted on one line (null when not written so). */
function topLevel(text: string, key: string): string | null {
  const m = new RegExp(String.raw`^${key}[ \t]*:[ \t]*(?:"([^"\\\n]*)"|'([^'\n]*)'|([^\s#"'][^\n#]*?))[ \t]*(?:#.*)?$`, 'm').exec(text);
  return m ? (m[1] ?? m[2] ?? m[3] ?? null) : null;
}

/** Flags that put the pass off the CPU: the stage's own preparation is then the one that counts. */
const DEVICE_FLAGS = /^--(device|cuda|gpu-rich)(=|$)/;

/**
 * The arithmetic `--forward-precision` asks for (fp32 when not given), as the stage will ask for it; null when the
 * flag's value is not one the command takes (it says what is wrong) or the flag is given twice.
 */
function precisionOf(argv: string[]): (typeof FORWARD_PRECISIONS)[number] | null {
  const at = argv.flatMap((a, i) => (a === '--forward-precision' ? [argv[i + 1]] : a.startsWith('--forward-precision=') ? [a.slice('--forward-precision='.length)] : []));
  if (at.length === 0) return 'fp32';
  const v = at.length === 1 ? FORWARD_PRECISIONS.find((p) => p === at[0]) : undefined;
  return v ?? null;
}

/**
 * What `argv` says of a merge that may need prompt states, read cheaply: null for help, version, fewer than two
 * arguments that are not flags, a first one that is not a readable file, or a gate mode without states. Else
 * `base`: the folder the recipe's `base_model` names on this machine (resolved as fetch resolves it offline: a
 * local folder against the working folder, else the Hugging Face cache's snapshot of the Hub id, `env` giving
 * the cache) when it has a config.json and the pass over it can be set up at once (hidden states on the CPU),
 * else null; `precision` when `--forward-precision` asks for other arithmetic than fp32.
 */
export function earlyGuess(argv: string[], cwd = process.cwd(), env: NodeJS.ProcessEnv = process.env): { base: string | null; precision?: (typeof FORWARD_PRECISIONS)[number] } | null {
  if (argv.some((a) => a === '--help' || a === '-h' || a === '--version')) return null;
  const bare = argv.filter((a) => !a.startsWith('-'));
  if (bare.length < 2) return null;
  let text: string;
  let fd: number | undefined;
  try {
    if (!statSync(bare[0]!).isFile()) return null;
    fd = openSync(bare[0]!, 'r');
    const head = Buffer.alloc(HEAD_BYTES);
    text = head.subarray(0, readSync(fd, head, 0, HEAD_BYTES, 0)).toString('utf8');
  } catch {
    return null; // the command says what is wrong with it
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  const mode = topLevel(text, 'gate_mode');
  // The mode's prompt states (libs/gates/modes.ts); no gate_mode line: the default mode's. A mode this
  // table does not know forks anyway (the merge says what is wrong).
  const states = mode !== null && Object.hasOwn(GATE_MODES, mode) ? GATE_MODES[mode as GateMode].states : GATE_MODES[DEFAULT_GATE_MODE].states;
  if (states !== 'hidden' && states !== 'router_input') return null;
  // Router inputs (fitted routers) read the experts' MLPs too: that pass is set up by its stage, once those are known.
  const ref = topLevel(text, 'base_model');
  const precision = precisionOf(argv);
  if (states !== 'hidden' || ref === null || precision === null || argv.some((a) => DEVICE_FLAGS.test(a))) return { base: null };
  // As fetch will find it offline: a local folder, else the Hugging Face cache's snapshot of the Hub id.
  const on = modelDirOnDisk(ref, { baseDir: cwd, env });
  if (!on || !existsSync(join(on.dir, 'config.json'))) return { base: null };
  return precision === 'fp32' ? { base: on.dir } : { base: on.dir, precision };
}

/** Forks the forward worker when `argv` may need it, and tells it the base model when that is on this machine (earlyGuess); returns whether it forked. */
export function startEarly(argv: string[], worker = WORKER): boolean {
  const guess = earlyGuess(argv);
  if (!guess) return false;
  forkEarlyWorker(worker);
  // The same message the embed-prompts stage sends (prepareForwardWorker): the worker sets up one pass for both.
  if (guess.base) earlyWorker()?.send({ kind: 'prepare', job: 'prompts', modelDir: guess.base, options: guess.precision ? { precision: guess.precision } : {} }, () => undefined);
  return true;
}

/** Ends the early worker if the command did not take it (called once the command is done). */
export const stopEarly = dropEarlyWorker;
