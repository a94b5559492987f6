/**
 * One measured write in its own process, so that its peak RSS is the write's alone:
 *   write <assemble-experts dir> <recipe file> <output folder>   the write stage (runWrite), as the Nx write executor runs it
 *   copy  <assemble-experts dir> <output file>                   baseline: a plain stream copy of the plan's source byte
 *                                                                ranges, in plan order, into one file, then fsync
 * Prints one JSON line: { seconds, cpuSeconds, bytes, peakRssKiB, maxRssKiB } (seconds: the write or copy only, not
 * process start or imports; cpuSeconds: this process's user + system CPU over the same span, the kernel's copies into
 * the page cache included, its background writeback not).
 *
 * peakRssKiB is this process image's high-water mark (VmHWM in /proc/self/status). process.resourceUsage().maxRSS
 * is kept beside it but is not the child's own figure on Linux: the fork that spawns a child copies the parent's
 * resident pages and exec carries that high-water mark over, so maxRSS is at least the parent's RSS at spawn time.
 */
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { readPlan } from '../libs/stages';
import { readModelsFile } from '../libs/stages';
import { hubCacheDir } from '../libs/resolve';
import { readGates } from '../libs/stages';
import { runWrite } from '../libs/stages';
import type { SourcePart } from '../libs/plan';

export interface ChildResult {
  seconds: number;
  cpuSeconds: number;
  bytes: number;
  /** VmHWM of this process image (maxRSS where /proc is missing). */
  peakRssKiB: number;
  /** process.resourceUsage().maxRSS: includes the spawning parent's RSS on Linux. */
  maxRssKiB: number;
}

function memory(): { peakRssKiB: number; maxRssKiB: number } {
  const maxRssKiB = process.resourceUsage().maxRSS;
  let peakRssKiB = maxRssKiB;
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) peakRssKiB = Number(m[1]);
  } catch {
    // not Linux: maxRSS is the best there is
  }
  return { peakRssKiB, maxRssKiB };
}

const cpuSince = (c0: NodeJS.CpuUsage) => {
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / 1e6;
};

/** The plan checked against the models its fetch stage resolved (models.json's paths are relative to the workspace, or the recipe's folder). */
async function planOf(assembleDir: string, recipeFile: string, workspace?: string) {
  const roots = { workspace: workspace ?? dirname(recipeFile), hubCache: hubCacheDir() };
  return readPlan(assembleDir, (await readModelsFile(join(assembleDir, '..', 'fetch', 'models.json'), roots)).models);
}

async function writeStage(assembleDir: string, recipeFile: string, out: string, workspace?: string): Promise<ChildResult> {
  const plan = await planOf(assembleDir, recipeFile, workspace);
  const gates = await readGates(assembleDir);
  const recipeText = await readFile(recipeFile, 'utf8');
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  await runWrite(plan, { outPath: out, gates, recipeText, tokenizerDir: plan.models[0]!.dir, copyTokenizer: true, overwrite: false });
  const seconds = (performance.now() - t0) / 1000;
  const cpuSeconds = cpuSince(c0);
  let bytes = 0;
  for (const f of await readdir(out)) bytes += (await stat(join(out, f))).size;
  return { seconds, cpuSeconds, bytes, ...memory() };
}

async function streamCopy(assembleDir: string, outFile: string, recipeFile: string): Promise<ChildResult> {
  const plan = await planOf(assembleDir, recipeFile);
  const ranges = plan.tensors.flatMap((t) => t.parts.filter((p): p is SourcePart => p.kind === 'source'));
  const bytes = ranges.reduce((a, p) => a + p.byteLength, 0);
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  async function* chunks() {
    for (const p of ranges) if (p.byteLength > 0) yield* createReadStream(p.file, { start: p.offset, end: p.offset + p.byteLength - 1 });
  }
  await pipeline(Readable.from(chunks()), createWriteStream(outFile));
  // The write stage syncs each shard before it returns; the baseline does the same so both end on disk.
  const fh = await open(outFile, 'r+');
  await fh.sync();
  await fh.close();
  return { seconds: (performance.now() - t0) / 1000, cpuSeconds: cpuSince(c0), bytes, ...memory() };
}

async function main(): Promise<void> {
  const [mode, ...args] = process.argv.slice(2);
  let r: ChildResult;
  if (mode === 'write' && (args.length === 3 || args.length === 4)) r = await writeStage(args[0]!, args[1]!, args[2]!, args[3]);
  else if (mode === 'copy' && args.length === 3) r = await streamCopy(args[0]!, args[1]!, args[2]!);
  else throw new Error('usage: write-child.ts write <assemble dir> <recipe> <out> [<workspace>] | copy <assemble dir> <out file> <recipe>');
  process.stdout.write(JSON.stringify(r) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
