/**
 * `npm run bench -- gguf`: writing a merged folder's GGUF (libs/gguf, from the written shards, as the write
 * stage does) against a plain copy of the same bytes, and against llama.cpp's convert_hf_to_gguf.py where one
 * is installed (GGUF_CONVERTER=path/to/convert_hf_to_gguf.py, PYTHON=python with torch and numpy, PYTHONPATH
 * for its gguf-py), on the medium model's 2-expert Mixtral (or --size NAME: bench/incremental.ts's sizes); bf16, f16 and q8_0.
 */
import { createReadStream, createWriteStream, mkdirSync, readdirSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { ChunkPool } from '../libs/safetensors';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { mergeRecipe } from '../libs/pipeline';
import { SafetensorsWeights } from '../libs/safetensors';
import { converterOrder, ggufLayout, shardSource, useQuantWasm, writeModelGguf, type GgufOutType } from '../libs/gguf';
import { readSafetensorsHeader } from '../libs/safetensors';
import type { MergePlan, PlanTensor } from '../libs/plan';
import { writeFastModel, type TinyModelSpec } from './models';

export interface GgufBenchRow {
  type: GgufOutType;
  bytes: number;
  /** Median seconds of our write. */
  ours: number;
  /** Median of the copy's seconds, scaled to the GGUF's bytes. */
  copy: number;
  /** Median over the pairs (taken in turn) of the copy's scaled seconds / ours: the figure against the goal. */
  pairRatio: number;
  converter: number | null;
  /** The same write through quant.ts's scalar JavaScript kernels (the WebAssembly ones turned off), where they differ. */
  scalar: number | null;
}

/** The layout of a written folder (config.json and its shards, as the converter reads them). */
async function folderLayout(dir: string, type: GgufOutType) {
  const config = JSON.parse(await import('node:fs/promises').then((f) => f.readFile(join(dir, 'config.json'), 'utf8')));
  const files = readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
  const shards: PlanTensor[][] = [];
  for (const f of files) shards.push([...(await readSafetensorsHeader(join(dir, f))).tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype as never, shape: t.shape, parts: [], group: 'base' })));
  return { layout: ggufLayout({ config } as unknown as MergePlan, converterOrder(shards), type), files };
}

export async function benchGguf(tmp: string, spec: Omit<TinyModelSpec, 'dtype' | 'seed'>, log: (s: string) => void, rounds = 7): Promise<GgufBenchRow[]> {
  const model = join(tmp, 'dense');
  await writeFastModel(model, spec);
  const recipe = join(tmp, 'moe.yml');
  writeFileSync(recipe, `base_model: ${model}\ngate_mode: random\nexperts:\n  - source_model: ${model}\n  - source_model: ${model}\n`);
  const out = join(tmp, 'out');
  await mergeRecipe({ recipeFile: recipe, outPath: out, modelBaseDir: tmp, allowIdenticalModels: true, cacheDir: join(tmp, 'cache') });
  const rows: GgufBenchRow[] = [];
  const converter = process.env.GGUF_CONVERTER && existsSync(process.env.GGUF_CONVERTER) ? process.env.GGUF_CONVERTER : null;
  for (const type of ['bf16', 'f16', 'q8_0'] as const) {
    const { layout, files } = await folderLayout(out, type);
    const file = join(tmp, `ours-${type}.gguf`);
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
    const ours: number[] = [];
    const scalar: number[] = [];
    const copies: number[] = [];
    let bytes = 0;
    // Baseline: the shards' bytes streamed through this process into one file (what any converter at least
    // reads and writes; as the write section's baseline, a userspace copy, not the kernel's copy_file_range).
    const copy = async () => {
      const c0 = performance.now();
      const sink = createWriteStream(join(tmp, 'copy.bin'));
      for (const f of files) await pipeline(createReadStream(join(out, f), { highWaterMark: 16 << 20 }), sink, { end: false });
      await new Promise<void>((res, rej) => sink.end((e?: Error | null) => (e ? rej(e) : res())));
      copies.push((performance.now() - c0) / 1000);
      rmSync(join(tmp, 'copy.bin'));
    };
    const write = async () => {
      rmSync(file, { force: true });
      const t0 = performance.now();
      // As the write stage does it: chunks from a pool.
      const pool = new ChunkPool(16 << 20);
      bytes = await writeModelGguf(file, layout, [], shardSource(await SafetensorsWeights.openFiles(out, files.map((f) => join(out, f))), pool), { pool });
      ours.push((performance.now() - t0) / 1000);
    };
    // Pairs taken in turn, the order alternating (the disk's rate drifts minute to minute): each pair's ratio,
    // and the median of them, is the figure.
    for (let round = 0; round < rounds; round++) {
      if (round % 2 === 0) {
        await copy();
        await write();
      } else {
        await write();
        await copy();
      }
      if (type !== 'bf16' && round < 2) {
        // bf16 from bf16 shards passes bytes through: no kernel to compare.
        rmSync(file, { force: true });
        useQuantWasm(false);
        try {
          const s0 = performance.now();
          const p2 = new ChunkPool(16 << 20);
          await writeModelGguf(file, layout, [], shardSource(await SafetensorsWeights.openFiles(out, files.map((f) => join(out, f))), p2), { pool: p2 });
          scalar.push((performance.now() - s0) / 1000);
        } finally {
          useQuantWasm(true);
        }
      }
    }
    let conv: number | null = null;
    if (converter) {
      const t0 = performance.now();
      const r = spawnSync(process.env.PYTHON ?? 'python3', [converter, out, '--outtype', type, '--outfile', join(tmp, `conv-${type}.gguf`)], { encoding: 'utf8', timeout: 600_000 });
      conv = (performance.now() - t0) / 1000;
      if (r.status !== 0) {
        log(`converter failed (${r.status}): ${(r.stderr ?? '').trim().split('\n').pop()}`);
        conv = null;
      }
    }
    const copyBytes = files.reduce((a, f) => a + statSync(join(out, f)).size, 0);
    const scale = bytes / copyBytes;
    const pairs = ours.map((o, i) => (copies[i]! * scale) / o);
    rows.push({ type, bytes, ours: median(ours), copy: median(copies) * scale, pairRatio: median(pairs), converter: conv, scalar: scalar.length ? median(scalar) : null });
    log(`gguf ${type}: ${(bytes / 1e6).toFixed(0)} MB in ${ours.map((x) => x.toFixed(2)).join(' / ')} s${scalar.length ? ` (scalar kernels ${median(scalar).toFixed(2)} s)` : ''}; copy of the shards ${(copyBytes / 1e6).toFixed(0)} MB in ${copies.map((x) => x.toFixed(2)).join(' / ')} s; pair ratios (copy scaled / ours) ${pairs.map((x) => x.toFixed(2)).join(' ')}${conv !== null ? `; converter ${conv.toFixed(2)} s` : ''}`);
  }
  return rows;
}

export interface GgufMergeRow {
  step: 'cold' | 'prompt edit';
  /** Best wall seconds of `mergekit-moe` with --gguf bf16, and without (the baseline), taken in turn. */
  withGguf: number;
  /** The same with the GGUF split (--gguf-split-max-size 50g: the routers' file and one of the rest). */
  withSplit: number;
  without: number;
}

/**
 * The GGUF's extra cost inside a merge: `mergekit-moe` at a size (bench/incremental.ts's hidden-mode recipe, four
 * experts) with `--gguf bf16` and without, in turn, best of `rounds`: a cold merge into a new folder, then prompt
 * edits in place (the recipe toggles between two prompt sets, both cached after the first round).
 */
export async function benchGgufMerge(tmp: string, spec: Omit<TinyModelSpec, 'dtype' | 'seed'>, log: (s: string) => void, rounds = 3): Promise<GgufMergeRow[]> {
  const { recipe } = await import('./incremental');
  const models = join(tmp, 'models');
  for (const m of ['a', 'b']) await writeFastModel(join(models, m), spec);
  const texts = [recipe(models, { extraPrompt: false, noise: 0.01, swapLast: false }), recipe(models, { extraPrompt: true, noise: 0.01, swapLast: false })];
  const bin = join(__dirname, '..', 'bin', 'mergekit-moe.js');
  const env = { ...process.env, MOE_FORGE_CACHE: join(tmp, 'cache'), CI: 'true' };
  const flags = { G: ['--gguf', 'bf16'], S: ['--gguf', 'bf16', '--gguf-split-max-size', '50g'], N: [] };
  const run = (variant: 'G' | 'S' | 'N', text: string): number => {
    const dir = join(tmp, `r${variant}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'moe.yml'), text);
    const t0 = performance.now();
    const r = spawnSync(process.execPath, [bin, join(dir, 'moe.yml'), join(tmp, `out${variant}`), ...flags[variant], '--i-understand-this-is-not-useful-without-training'], { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mergekit-moe failed (${r.status}): ${r.stderr}`);
    return (performance.now() - t0) / 1000;
  };
  const cold = { G: [] as number[], S: [] as number[], N: [] as number[] };
  const edit = { G: [] as number[], S: [] as number[], N: [] as number[] };
  // A cold run first, untimed: the prompt states of both sets go into the cache.
  for (const v of ['G', 'S', 'N'] as const) for (const t of texts) run(v, t);
  for (let i = 0; i < rounds; i++) {
    for (const v of ['G', 'S', 'N'] as const) {
      rmSync(join(tmp, `out${v}`), { recursive: true, force: true });
      cold[v].push(run(v, texts[0]!));
      edit[v].push(run(v, texts[1]!));
    }
  }
  const best = (xs: number[]) => Math.min(...xs);
  const rows: GgufMergeRow[] = [
    { step: 'cold', withGguf: best(cold.G), withSplit: best(cold.S), without: best(cold.N) },
    { step: 'prompt edit', withGguf: best(edit.G), withSplit: best(edit.S), without: best(edit.N) },
  ];
  for (const r of rows) log(`gguf-merge ${r.step}: ${r.withGguf.toFixed(2)} s with --gguf bf16, ${r.withSplit.toFixed(2)} s with it split, ${r.without.toFixed(2)} s without`);
  return rows;
}
