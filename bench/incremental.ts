/**
 * Incremental merges at scale through `mergekit-moe` (hidden gates, Mixtral, 4 experts, 17 prompts): a cold build,
 * then one prompt added, one expert's noise_scale changed, one expert swapped, and a no-op, all into the same
 * output folder. Each figure sits beside its floor measured in the same run: the stream copy of the bytes the
 * step had to write, and the forward pass of the prompts it had to compute.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createReadStream, createWriteStream, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { join } from 'node:path';
import { computePromptStates } from '../libs/forward';
import { loadTokenizer } from '../libs/tokenizer';
import { benchForward } from './forward';
import { writeFastModel, type TinyModelSpec } from './models';
import { ROOT } from './workspace';

type Spec = Omit<TinyModelSpec, 'dtype' | 'seed'>;

export const SIZES: Record<string, Spec> = {
  /** TinyLlama's shape: the output is 6.77 GB of bf16. */
  medium: { modelType: 'llama', hidden: 2048, layers: 22, heads: 32, kvHeads: 4, intermediate: 5632, vocab: 32000 },
  /** The same recipe at a size that runs in about a minute. */
  small: { modelType: 'llama', hidden: 512, layers: 6, heads: 8, kvHeads: 2, intermediate: 1408, vocab: 4000 },
};

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

/** 17 prompts over 4 experts (plus one when `extra`). */
function expertPrompts(extra: boolean): string[][] {
  const experts = [0, 1, 2, 3].map((e) => TOPICS.slice(e * 4, e * 4 + 4 + (e === 3 ? 1 : 0)).map((t, i) => prompt(t, i)));
  if (extra) experts[0]!.push(prompt('extra', 99));
  return experts;
}

export function recipe(models: string, o: { extraPrompt: boolean; noise: number; swapLast: boolean }): string {
  // Expert 1 carries noise; the last expert's model is swapped (b -> a).
  const experts = expertPrompts(o.extraPrompt);
  const model = (e: number) => (e === 3 && o.swapLast ? 'a' : e % 2 === 0 ? 'a' : 'b');
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

/** `mergekit-moe` under GNU time: wall seconds and the peak RSS of the largest process (the forward child included). */
function cli(recipeFile: string, out: string, cacheDir: string): Promise<{ seconds: number; peakRssKiB: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn('/usr/bin/time', ['-f', 'PEAK_RSS_KIB %M', process.execPath, join(ROOT, 'bin', 'mergekit-moe.js'), recipeFile, out, '--i-understand-this-is-not-useful-without-training'], {
      env: { ...process.env, MOE_FORGE_CACHE: cacheDir, CI: 'true' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('exit', (code) => {
      const seconds = (performance.now() - t0) / 1000;
      const m = /PEAK_RSS_KIB (\d+)/.exec(stderr);
      if (code !== 0 || !m) reject(new Error(`mergekit-moe failed (${code}):\n${stderr}`));
      else resolve({ seconds, peakRssKiB: Number(m[1]), stderr });
    });
  });
}

export async function benchIncremental(tmp: string, size: string, log: (s: string) => void) {
  const spec = SIZES[size];
  if (!spec) throw new Error(`unknown size ${size} (known: ${Object.keys(SIZES).join(', ')})`);
  const dir = join(tmp, `incremental-${size}`);
  const models = join(dir, 'models');
  const tg = performance.now();
  for (const m of ['a', 'b']) await writeFastModel(join(models, m), spec);
  log(`generated 2 dense ${size} models in ${((performance.now() - tg) / 1000).toFixed(1)} s`);
  const cacheDir = join(dir, 'cache');
  const recipeFile = join(dir, 'moe.yml');
  const out = join(dir, 'out');
  const steps: StepResult[] = [];
  const step = async (name: string, o: Parameters<typeof recipe>[1]) => {
    writeFileSync(recipeFile, recipe(models, o));
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
  await step('cold build', { extraPrompt: false, noise: 0.01, swapLast: false });
  await step('after adding one prompt', { extraPrompt: true, noise: 0.01, swapLast: false });
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

  // Floors, same run: the forward pass of the added prompt alone; the forward pass at ORT Gemm speed; the stream copy.
  const tok = await loadTokenizer(join(models, 'a'));
  const ids = tok.encodePrompt(prompt('extra', 99));
  let onePrompt = Infinity;
  for (let i = 0; i < 2; i++) {
    const t0 = performance.now();
    await computePromptStates(join(models, 'a'), [ids]);
    onePrompt = Math.min(onePrompt, (performance.now() - t0) / 1000);
  }
  const promptTokens = expertPrompts(false).flat().map((p) => tok.encodePrompt(p).length);
  const meanTokens = Math.round(promptTokens.reduce((a, b) => a + b, 0) / promptTokens.length);
  const forward = await benchForward({ spec: { ...spec, dtype: 'BF16' }, prompts: promptTokens.length, tokens: meanTokens, modelDir: join(models, 'a') });
  const noop = (() => {
    const t0 = performance.now();
    execFileSync(process.execPath, [join(ROOT, 'bin', 'mergekit-moe.js'), '--help'], { stdio: 'ignore' });
    return (performance.now() - t0) / 1000;
  })();
  const copy = await streamCopy(out, join(dir, 'copy.bin'));
  rmSync(dir, { recursive: true, force: true });
  return { spec, steps, onePromptSeconds: onePrompt, onePromptTokens: ids.length, forward, noopFloorSeconds: noop, noopBestSeconds: Math.min(...noopRuns), nodeStartSeconds: Math.min(...nodeRuns), copy };
}

/** The stream-copy floor: every shard of the output through createReadStream -> createWriteStream, then fsync. */
async function streamCopy(from: string, to: string): Promise<{ bytes: number; seconds: number }> {
  const shards = readdirSync(from).filter((f) => f.endsWith('.safetensors')).sort().map((f) => join(from, f));
  const t0 = performance.now();
  let bytes = 0;
  async function* chunks() {
    for (const f of shards) for await (const c of createReadStream(f, { highWaterMark: 16 << 20 })) {
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
