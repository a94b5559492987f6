/**
 * Incremental merges at scale through `mergekit-moe` (hidden gates, Mixtral, 4 experts and 17 prompts; at the
 * large size 2 experts and 8 prompts): a cold build, then one prompt added, one expert's noise_scale changed, one
 * expert swapped, and a no-op, all into the same output folder. Each figure sits beside its floor measured in the
 * same run: the stream copy of the bytes the step had to write, and the forward pass of the prompts it had to
 * compute. Where a Python mergekit is installed (the reference; `findReference`), it runs the same recipe cold and
 * with the prompt added, each right after ours, into a folder of its own.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, createReadStream, createWriteStream, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, statfsSync, symlinkSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { delimiter, join } from 'node:path';
import { computePromptStates, type ForwardPrecision } from '../libs/forward';
import { FP32_KERNEL_ENV, wideAvailable } from '../libs/forward';
import { loadTokenizer } from '../libs/tokenizer';
import { benchForward } from './forward';
import { specWithTokenizer, useRealTokenizer, writeFastModel, type TinyModelSpec } from './models';
import { ROOT } from './workspace';

type Spec = Omit<TinyModelSpec, 'dtype' | 'seed'>;

export const SIZES: Record<string, Spec> = {
  /** TinyLlama's shape: the output is 6.77 GB of bf16. */
  medium: { modelType: 'llama', hidden: 2048, layers: 22, heads: 32, kvHeads: 4, intermediate: 5632, vocab: 32000 },
  /** The same recipe at a size that runs in about a minute. */
  small: { modelType: 'llama', hidden: 512, layers: 6, heads: 8, kvHeads: 2, intermediate: 1408, vocab: 4000 },
  /** Mistral-7B's shape (two 14.5 GB inputs, a 26 GB output): 2 experts, 8 prompts (SIZE_EXPERTS). */
  large: { modelType: 'llama', hidden: 4096, layers: 32, heads: 32, kvHeads: 8, intermediate: 14336, vocab: 32000 },
};

/** Experts of the recipe at each size (4 unless named here): 4 prompts each, 17 in all with 4 experts. */
export const SIZE_EXPERTS: Record<string, number> = { large: 2 };

export interface StepResult {
  step: string;
  seconds: number;
  peakRssKiB: number;
  /** Bytes of output files created or replaced by the step (unchanged inodes are not counted). */
  bytesWritten: number;
  outputBytes: number;
}

const TOPICS = ['python', 'rust', 'sql', 'poetry', 'history', 'algebra', 'biology', 'cooking', 'travel', 'law', 'music', 'physics', 'chess', 'finance', 'medicine', 'geology', 'weather'];
const prompt = (topic: string, i: number) => `Question ${i} about ${topic}: explain the main idea to a curious beginner.`;

/** 4 prompts per expert, the fourth expert's 5 (17 over 4 experts), plus one for the first when `extra`, and `more`. */
function expertPrompts(extra: boolean, n = 4, more?: string): string[][] {
  const experts = Array.from({ length: n }, (_, e) => TOPICS.slice(e * 4, e * 4 + 4 + (e === 3 ? 1 : 0)).map((t, i) => prompt(t, i)));
  if (extra) experts[0]!.push(prompt('extra', 99));
  if (more !== undefined) experts[0]!.push(more);
  return experts;
}

/** `more`: one prompt more for the first expert (the edits of the one-prompt-edit rows, a new one each run). */
export function recipe(models: string, o: { extraPrompt: boolean; noise: number; swapLast: boolean; experts?: number; more?: string }): string {
  // Expert 1 carries noise; the last expert's model is swapped (b -> a).
  const experts = expertPrompts(o.extraPrompt, o.experts, o.more);
  const last = experts.length - 1;
  const model = (e: number) => (e === last && o.swapLast ? 'a' : e % 2 === 0 ? 'a' : 'b');
  return `base_model: ${models}/a
gate_mode: hidden
architecture: mixtral
experts:
${experts.map((ps, e) => `  - source_model: ${models}/${model(e)}\n${e === 1 ? `    noise_scale: ${o.noise}\n` : ''}    positive_prompts:\n${ps.map((p) => `      - "${p}"`).join('\n')}`).join('\n')}
`;
}

/** File -> [inode, size] of a folder (empty when missing). */
function files(dir: string): Map<string, [number, number]> {
  try {
    return new Map(readdirSync(dir).map((f) => {
      const s = statSync(join(dir, f));
      return [f, [s.ino, s.size] as [number, number]];
    }));
  } catch {
    return new Map();
  }
}

/** A command under GNU time: wall seconds, the peak RSS of its largest process, its stderr. */
function underTime(command: string, args: string[], env: NodeJS.ProcessEnv, failed: (code: number | null, stderr: string) => string): Promise<{ seconds: number; peakRssKiB: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn('/usr/bin/time', ['-f', 'PEAK_RSS_KIB %M', command, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('exit', (code) => {
      const seconds = (performance.now() - t0) / 1000;
      const m = /PEAK_RSS_KIB (\d+)/.exec(stderr);
      if (code !== 0 || !m) reject(new Error(failed(code, stderr)));
      else resolve({ seconds, peakRssKiB: Number(m[1]), stderr });
    });
  });
}

/** `mergekit-moe` under GNU time: wall seconds and the peak RSS of the largest process (the forward child included). */
function cli(recipeFile: string, out: string, cacheDir: string, env: NodeJS.ProcessEnv = {}): Promise<{ seconds: number; peakRssKiB: number; stderr: string }> {
  const args = [join(ROOT, 'bin', 'mergekit-moe.js'), recipeFile, out, '--i-understand-this-is-not-useful-without-training', ...cliArgs];
  return underTime(process.execPath, args, { ...process.env, MOE_FORGE_CACHE: cacheDir, CI: 'true', ...env }, (code, stderr) => `mergekit-moe failed (${code}):\n${stderr}`);
}

/**
 * Models a and b as a Hugging Face cache holds them after a download (`org/a`, `org/b`: refs/main naming a
 * snapshot whose files link to the generated ones), for the cold build of a recipe that names them by Hub id.
 */
function hubCacheOf(models: string, hub: string): void {
  for (const [m, digit] of [['a', '1'], ['b', '2']] as const) {
    const repo = join(hub, `models--org--${m}`);
    const sha = digit.repeat(40);
    mkdirSync(join(repo, 'refs'), { recursive: true });
    writeFileSync(join(repo, 'refs', 'main'), sha);
    const snap = join(repo, 'snapshots', sha);
    mkdirSync(snap, { recursive: true });
    for (const f of readdirSync(join(models, m))) symlinkSync(join(models, m, f), join(snap, f));
  }
}

/** A Python mergekit-moe to run beside ours, and how it was found. */
export interface Reference {
  command: string;
  foundBy: 'MOE_FORGE_MERGEKIT' | 'PATH';
}

/** True when `file`'s first line is a Python shebang (a pip entry point); ours starts `#!/usr/bin/env node`. */
function isPythonEntryPoint(file: string): boolean {
  let fd: number | undefined;
  try {
    if (!statSync(file).isFile()) return false;
    fd = openSync(file, 'r');
    const head = Buffer.alloc(256);
    const n = readSync(fd, head, 0, head.length, 0);
    const first = head.subarray(0, n).toString('latin1').split('\n')[0]!;
    return first.startsWith('#!') && /python/.test(first);
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * The reference: MOE_FORGE_MERGEKIT (a path to its `mergekit-moe`, which must be a Python entry point), else the
 * first `mergekit-moe` on PATH that is a Python entry point (not ours). `why` says in one line what was found.
 */
export function findReference(env: NodeJS.ProcessEnv = process.env): { ref: Reference | null; why: string } {
  const given = env.MOE_FORGE_MERGEKIT;
  if (given) {
    if (!isPythonEntryPoint(given)) throw new Error(`MOE_FORGE_MERGEKIT=${given}: expected the path of a Python mergekit-moe entry point (a file starting #!...python)`);
    return { ref: { command: given, foundBy: 'MOE_FORGE_MERGEKIT' }, why: `reference: ${given} (MOE_FORGE_MERGEKIT)` };
  }
  for (const d of (env.PATH ?? '').split(delimiter).filter(Boolean)) {
    const f = join(d, 'mergekit-moe');
    if (isPythonEntryPoint(f)) return { ref: { command: f, foundBy: 'PATH' }, why: `reference: ${f} (PATH)` };
  }
  return { ref: null, why: 'reference: no Python mergekit-moe found (set MOE_FORGE_MERGEKIT=/path/to/venv/bin/mergekit-moe, see bench/mergekit-shim): torch-free baselines only' };
}

/** The folder of the pydantic shim the reference starts with (bench/mergekit-shim/sitecustomize.py). */
const SHIM = join(__dirname, 'mergekit-shim');

/** The reference under GNU time into `out` (removed first): wall seconds and peak RSS. */
async function referenceRun(ref: Reference, recipeFile: string, out: string): Promise<{ seconds: number; peakRssKiB: number }> {
  rmSync(out, { recursive: true, force: true });
  const env = { ...process.env, PYTHONPATH: [SHIM, process.env.PYTHONPATH].filter(Boolean).join(delimiter), HF_HUB_OFFLINE: '1', TRANSFORMERS_OFFLINE: '1' };
  const { seconds, peakRssKiB } = await underTime(ref.command, [recipeFile, out], env, (code, stderr) => `the reference ${ref.command} failed (${code}):\n${stderr.slice(-4000)}`);
  return { seconds, peakRssKiB };
}

/** Bytes of one generated dense bf16 model and of the merged Mixtral with `experts` experts (routers in bf16). */
export function sizeBytes(spec: Spec, experts: number): { input: number; output: number } {
  const { hidden: H, layers: L, heads, kvHeads, intermediate: I, vocab: V } = spec;
  const kv = (H / heads) * kvHeads;
  const attention = 2 * H * H + 2 * H * kv + 2 * H;
  const mlp = 3 * H * I;
  const input = 2 * (2 * V * H + L * (attention + mlp) + H);
  const output = 2 * (2 * V * H + L * (attention + experts * mlp + experts * H) + H);
  return { input, output };
}

/** The copy floor copies at most this much of the output (a rate; the large output would need 26 GB more). */
const COPY_CAP = 8e9;

/**
 * Disk needed in `tmp` for a size: two input models, our output, and the larger of the copy floor's file and the
 * reference's output (removed after each of its runs). Throws, naming bytes needed and free, before any work.
 */
export function checkDisk(tmp: string, size: string, experts: number, withReference: boolean): { needed: number; free: number } {
  const { input, output } = sizeBytes(SIZES[size]!, experts);
  const copy = Math.min(output, COPY_CAP);
  const needed = 2 * input + output + Math.max(copy, withReference ? output : 0) + 1e9;
  mkdirSync(tmp, { recursive: true });
  const fs = statfsSync(tmp);
  const free = fs.bavail * fs.bsize;
  const gb = (x: number) => (x / 1e9).toFixed(1);
  if (free < needed) {
    throw new Error(`incremental --size ${size} needs ${gb(needed)} GB free in ${tmp} and ${gb(free)} GB are: inputs 2 × ${gb(input)} GB, our output ${gb(output)} GB, ${withReference ? `the reference's output ${gb(output)} GB or ` : ''}the copy floor's ${gb(copy)} GB, 1 GB spare; free space there or set TMPDIR to a bigger disk`);
  }
  return { needed, free };
}

export interface ReferenceResult {
  command: string;
  foundBy: string;
  cold: { seconds: number; peakRssKiB: number };
  plus: { seconds: number; peakRssKiB: number };
}

/** One-prompt edits timed each way (back to back, and EDIT_PAUSE_MS apart). */
const EDITS = 5;
const EDIT_PAUSE_MS = 3000;

/** Options every `mergekit-moe` command of the section gets (the bench's --forward-precision). */
let cliArgs: string[] = [];

/** `precision`: every command runs with `--forward-precision` it (null: without the flag, fp32). */
export async function benchIncremental(tmp: string, size: string, log: (s: string) => void, precision: ForwardPrecision | null = null, tokenizer: string | null = null) {
  cliArgs = precision ? ['--forward-precision', precision] : [];
  if (!SIZES[size]) throw new Error(`unknown size ${size} (known: ${Object.keys(SIZES).join(', ')})`);
  const spec = specWithTokenizer(SIZES[size], tokenizer);
  const experts = SIZE_EXPERTS[size] ?? 4;
  const { ref, why } = findReference();
  log(why);
  const disk = checkDisk(tmp, size, experts, ref !== null);
  log(`disk: ${(disk.needed / 1e9).toFixed(1)} GB needed, ${(disk.free / 1e9).toFixed(1)} GB free in ${tmp}`);
  const dir = join(tmp, `incremental-${size}`);
  const models = join(dir, 'models');
  const tg = performance.now();
  for (const m of ['a', 'b']) await writeFastModel(join(models, m), spec);
  if (tokenizer) for (const m of ['a', 'b']) useRealTokenizer(join(models, m), tokenizer, spec.vocab, ROOT);
  log(`generated 2 dense ${size} models in ${((performance.now() - tg) / 1000).toFixed(1)} s${tokenizer ? `, with ${tokenizer}'s tokenizer` : ''}`);
  const cacheDir = join(dir, 'cache');
  const recipeFile = join(dir, 'moe.yml');
  const out = join(dir, 'out');
  const refOut = join(dir, 'out-reference');
  const steps: StepResult[] = [];
  const step = async (name: string, o: Parameters<typeof recipe>[1]) => {
    writeFileSync(recipeFile, recipe(models, { ...o, experts }));
    const before = files(out);
    const r = await cli(recipeFile, out, cacheDir);
    const after = files(out);
    let bytesWritten = 0, outputBytes = 0;
    for (const [f, [ino, sz]] of after) {
      outputBytes += sz;
      if (before.get(f)?.[0] !== ino) bytesWritten += sz;
    }
    steps.push({ step: name, seconds: r.seconds, peakRssKiB: r.peakRssKiB, bytesWritten, outputBytes });
    log(`${name}: ${r.seconds.toFixed(2)} s, ${(bytesWritten / 1e9).toFixed(3)} of ${(outputBytes / 1e9).toFixed(2)} GB written, peak RSS ${(r.peakRssKiB / 1024).toFixed(0)} MiB`);
  };
  // The reference on the recipe ours just built (its whole merge each time: it keeps nothing between runs).
  const reference = async (name: string) => {
    const r = await referenceRun(ref!, recipeFile, refOut);
    rmSync(refOut, { recursive: true, force: true });
    log(`reference, ${name}: ${r.seconds.toFixed(2)} s, peak RSS ${(r.peakRssKiB / 1024).toFixed(0)} MiB`);
    return r;
  };
  await step('cold build', { extraPrompt: false, noise: 0.01, swapLast: false });
  const refCold = ref ? await reference('cold') : null;
  await step('after adding one prompt', { extraPrompt: true, noise: 0.01, swapLast: false });
  const refPlus = ref ? await reference('one prompt added') : null;
  await step("after changing one expert's noise_scale", { extraPrompt: true, noise: 0.02, swapLast: false });
  await step('after swapping one expert', { extraPrompt: true, noise: 0.02, swapLast: true });
  await step('no-op', { extraPrompt: true, noise: 0.02, swapLast: true });
  // The no-op against a bare node start (issue #22: within 0.3 s of it), alternating, best of 3 each, so that a
  // machine whose load drifts weighs on both alike.
  const noopRuns: number[] = [];
  const nodeRuns: number[] = [];
  for (let i = 0; i < 3; i++) {
    noopRuns.push((await cli(recipeFile, out, cacheDir)).seconds);
    const t0 = performance.now();
    execFileSync(process.execPath, ['-e', '0'], { stdio: 'ignore' });
    nodeRuns.push((performance.now() - t0) / 1000);
  }
  log(`no-op again: ${noopRuns.map((x) => x.toFixed(2)).join(' / ')} s; node -e 0: ${nodeRuns.map((x) => x.toFixed(2)).join(' / ')} s`);
  // One-prompt edits as a user makes them (issue #22, goal 4): each run's recipe has one prompt the runs before
  // never had (in place of the last run's), EDITS runs back to back, then EDITS with EDIT_PAUSE_MS before each
  // (the pause lets the VM take back freed memory, as between a user's edits).
  let edit = 0;
  const edits = async (pauseMs: number): Promise<number[]> => {
    const seconds: number[] = [];
    for (let i = 0; i < EDITS; i++) {
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      writeFileSync(recipeFile, recipe(models, { extraPrompt: true, noise: 0.02, swapLast: true, experts, more: prompt(`edit${edit++}`, 98) }));
      seconds.push((await cli(recipeFile, out, cacheDir)).seconds);
    }
    return seconds;
  };
  const editBackToBack = await edits(0);
  const editSpaced = await edits(EDIT_PAUSE_MS);
  // fp32 where the wide kernel runs the pass: the same spaced edits with onnxruntime's Gemm instead, alternating
  // with the default, so the two see the same machine.
  let editKernels: { wide: number[]; onnxruntime: number[] } | null = null;
  if ((precision ?? 'fp32') === 'fp32' && wideAvailable()) {
    editKernels = { wide: [], onnxruntime: [] };
    for (let i = 0; i < EDITS; i++) {
      for (const kernel of ['onnxruntime', 'wide'] as const) {
        await new Promise((r) => setTimeout(r, EDIT_PAUSE_MS));
        writeFileSync(recipeFile, recipe(models, { extraPrompt: true, noise: 0.02, swapLast: true, experts, more: prompt(`edit${edit++}`, 98) }));
        editKernels[kernel].push((await cli(recipeFile, out, cacheDir, kernel === 'onnxruntime' ? { [FP32_KERNEL_ENV]: 'onnxruntime' } : {})).seconds);
      }
    }
    log(`fp32 one-prompt edits, ${EDIT_PAUSE_MS / 1000} s apart, alternating: wide kernel ${editKernels.wide.map((x) => x.toFixed(2)).join(' / ')} s; onnxruntime's Gemm ${editKernels.onnxruntime.map((x) => x.toFixed(2)).join(' / ')} s`);
  }
  log(`one-prompt edits, back to back: ${editBackToBack.map((x) => x.toFixed(2)).join(' / ')} s; ${EDIT_PAUSE_MS / 1000} s apart: ${editSpaced.map((x) => x.toFixed(2)).join(' / ')} s`);
  // The same edits saved into a recipe that `mergekit-moe --watch` follows: from the save to its result line.
  const watched = await watchedEdits(recipeFile, out, cacheDir, async (i) => {
    if (i > 0) await new Promise((r) => setTimeout(r, EDIT_PAUSE_MS));
    writeFileSync(recipeFile, recipe(models, { extraPrompt: true, noise: 0.02, swapLast: true, experts, more: prompt(`edit${edit++}`, 98) }));
  });
  log(`one-prompt edits under --watch, ${EDIT_PAUSE_MS / 1000} s apart: ${watched.seconds.map((x) => x.toFixed(2)).join(' / ')} s; the watching process's peak RSS ${(watched.peakRssKiB / 1024).toFixed(0)} MiB`);

  // Floors, same run: the forward pass of the added prompt alone; the forward pass at ORT Gemm speed; the stream copy.
  const tok = await loadTokenizer(join(models, 'a'));
  const ids = tok.encodePrompt(prompt('extra', 99));
  let onePrompt = Infinity;
  // In the arithmetic the section's commands use, so the floor is theirs.
  const onePromptPrecision = precision ?? 'fp32';
  for (let i = 0; i < 2; i++) {
    const t0 = performance.now();
    await computePromptStates(join(models, 'a'), [ids], { precision: onePromptPrecision });
    onePrompt = Math.min(onePrompt, (performance.now() - t0) / 1000);
  }
  const promptTokens = expertPrompts(false, experts).flat().map((p) => tok.encodePrompt(p).length);
  const meanTokens = Math.round(promptTokens.reduce((a, b) => a + b, 0) / promptTokens.length);
  const forward = await benchForward({ spec: { ...spec, dtype: 'BF16' }, prompts: promptTokens.length, tokens: meanTokens, modelDir: join(models, 'a') });
  const noop = (() => {
    const t0 = performance.now();
    execFileSync(process.execPath, [join(ROOT, 'bin', 'mergekit-moe.js'), '--help'], { stdio: 'ignore' });
    return (performance.now() - t0) / 1000;
  })();
  const copy = await streamCopy(out, join(dir, 'copy.bin'), COPY_CAP);
  rmSync(out, { recursive: true, force: true });
  // A first build of the recipe with its models named by Hub id, complete in the Hugging Face cache (offline),
  // right after one from the local folders: each into a new folder with a new cache (one output on disk at a time).
  const hub = join(dir, 'hub');
  hubCacheOf(models, hub);
  const coldPair = async (recipeText: string, env: NodeJS.ProcessEnv) => {
    writeFileSync(recipeFile, recipeText);
    const cold = join(dir, 'cold-out');
    const r = await cli(recipeFile, cold, join(dir, `cache-${Math.random().toString(36).slice(2)}`), env);
    rmSync(cold, { recursive: true, force: true });
    return { seconds: r.seconds, peakRssKiB: r.peakRssKiB };
  };
  const coldRecipe = recipe(models, { extraPrompt: false, noise: 0.01, swapLast: false, experts });
  const localCold = await coldPair(coldRecipe, {});
  const hubCold = await coldPair(coldRecipe.replaceAll(`${models}/`, 'org/'), { HF_HUB_CACHE: hub, HF_HUB_OFFLINE: '1' });
  log(`cold build again, local folders: ${localCold.seconds.toFixed(2)} s; by Hub id from the Hugging Face cache: ${hubCold.seconds.toFixed(2)} s`);
  rmSync(dir, { recursive: true, force: true });
  const referenceResult: ReferenceResult | null = ref && refCold && refPlus ? { command: ref.command, foundBy: ref.foundBy, cold: refCold, plus: refPlus } : null;
  return { spec, experts, tokenizer: tokenizer ?? 'byte-level (generated)', prompts: promptTokens.length, steps, editBackToBack, editSpaced, editKernels, editWatched: watched.seconds, watchPeakRssKiB: watched.peakRssKiB, onePromptSeconds: onePrompt, onePromptTokens: ids.length, onePromptPrecision, forward, noopFloorSeconds: noop, noopBestSeconds: Math.min(...noopRuns), nodeStartSeconds: Math.min(...nodeRuns), copy, localCold, hubCold, reference: referenceResult, referenceNote: why };
}

/**
 * `mergekit-moe --watch` on `recipeFile`: after its first build, EDITS saves (`save(i)` writes the i-th), each
 * timed from the save to the build's result line; the watching process's peak RSS (VmHWM) after the last.
 */
async function watchedEdits(recipeFile: string, out: string, cacheDir: string, save: (i: number) => Promise<void>): Promise<{ seconds: number[]; peakRssKiB: number }> {
  const args = [join(ROOT, 'bin', 'mergekit-moe.js'), recipeFile, out, '--watch', '--i-understand-this-is-not-useful-without-training', ...cliArgs];
  const child = spawn(process.execPath, args, { env: { ...process.env, MOE_FORGE_CACHE: cacheDir, CI: 'true' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b) => (stderr = (stderr + b).slice(-20000)));
  const results: ((line: string) => void)[] = [];
  let pending = '';
  child.stdout!.on('data', (b) => {
    pending += b;
    const lines = pending.split('\n');
    pending = lines.pop()!;
    for (const l of lines) if (/^(wrote|unchanged) /.test(l)) results.shift()?.(l);
  });
  const failed = new Promise<never>((_, reject) => child.on('exit', (code) => reject(new Error(`mergekit-moe --watch ended (${code}):\n${stderr}`))));
  const next = () => Promise.race([new Promise<string>((r) => results.push(r)), failed]);
  try {
    await next();
    const seconds: number[] = [];
    for (let i = 0; i < EDITS; i++) {
      const result = next();
      await save(i);
      const t0 = performance.now();
      await result;
      seconds.push((performance.now() - t0) / 1000);
    }
    const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
    return { seconds, peakRssKiB: hwm ? Number(hwm[1]) : NaN };
  } finally {
    failed.catch(() => undefined);
    child.kill('SIGINT');
  }
}

/** The stream-copy floor: the output's shards (their first `cap` bytes) through createReadStream -> createWriteStream, then fsync. */
async function streamCopy(from: string, to: string, cap = Infinity): Promise<{ bytes: number; seconds: number }> {
  const shards = readdirSync(from).filter((f) => f.endsWith('.safetensors')).sort().map((f) => join(from, f));
  const t0 = performance.now();
  let bytes = 0;
  async function* chunks() {
    for (const f of shards) for await (const c of createReadStream(f, { highWaterMark: 16 << 20 })) {
      if (bytes >= cap) return;
      bytes += (c as Buffer).length;
      yield c;
    }
  }
  await pipeline(Readable.from(chunks()), createWriteStream(to));
  const fh = await open(to, 'r+');
  await fh.sync();
  await fh.close();
  const seconds = (performance.now() - t0) / 1000;
  rmSync(to, { force: true });
  return { bytes, seconds };
}

/**
 * How each incremental figure grows from size to size: one column a size (from bench/out/incremental-<size>.json,
 * whichever runs made them), each figure with its factor over the size before. Null when fewer than two sizes.
 */
export function growthTable(outDir: string): string | null {
  const runs = Object.keys(SIZES).map((size) => {
    const f = join(outDir, `incremental-${size}.json`);
    return existsSync(f) ? { size, ...(JSON.parse(readFileSync(f, 'utf8')) as { date: string; result: Awaited<ReturnType<typeof benchIncremental>> }) } : null;
  }).filter((x) => x !== null);
  // Smallest output first.
  runs.sort((a, b) => a.result.steps[0]!.outputBytes - b.result.steps[0]!.outputBytes);
  if (runs.length < 2) return null;
  type Run = (typeof runs)[number];
  const figures: [string, (r: Run) => number | null][] = [
    ['output, GB', (r) => r.result.steps[0]!.outputBytes / 1e9],
    ['cold build, s', (r) => r.result.steps[0]!.seconds],
    ['one prompt added, s', (r) => r.result.steps[1]!.seconds],
    ['no-op, s', (r) => r.result.steps[4]!.seconds],
    ['peak RSS, MiB', (r) => Math.max(...r.result.steps.map((x) => x.peakRssKiB)) / 1024],
    ['forward pass at ORT Gemm rate, s', (r) => (r.result.forward as Record<string, number>).gemmBaselineSeconds ?? null],
    ['stream copy, MB/s', (r) => r.result.copy.bytes / 1e6 / r.result.copy.seconds],
    ['reference cold, s', (r) => r.result.reference?.cold.seconds ?? null],
    ['reference one prompt added, s', (r) => r.result.reference?.plus.seconds ?? null],
    ['reference peak RSS, MiB', (r) => (r.result.reference ? Math.max(r.result.reference.cold.peakRssKiB, r.result.reference.plus.peakRssKiB) / 1024 : null)],
    ['cold: ours / reference', (r) => (r.result.reference ? r.result.steps[0]!.seconds / r.result.reference.cold.seconds : null)],
  ];
  const fmt = (x: number) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
  const lines = figures.map(([label, get]) => [label, ...runs.map((r, i) => {
    const v = get(r);
    if (v === null) return '—';
    const prev = i > 0 ? get(runs[i - 1]!) : null;
    return prev ? `${fmt(v)} (×${(v / prev).toFixed(1)})` : fmt(v);
  })]);
  const head = ['figure', ...runs.map((r) => `${r.size} (${r.date.slice(0, 10)})`)];
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ').trimEnd();
  return ['growth from size to size (×: over the size before; each size from its own run, see each file\'s machine):', line(head), widths.map((w) => '-'.repeat(w)).join('-|-'), ...lines.map(line)].join('\n');
}
