/**
 * One forward pass over the report's texts in its own process, so that its time and peak RSS are its own:
 *   merged <request.json>   the merged model (plan + gates, libs/stages/merged-model.ts) through libs/forward/moe.ts,
 *                           as the report's routing worker runs it
 *   base <request.json>     the base model's dense forward over the same token ids and all its layers (run.ts)
 * request.json: { ids: number[][], plan?: MergePlan, planDir?: string, baseDir?: string }.
 * Prints one JSON line: { seconds, peakRssKiB } (seconds: the forward only, not process start or reading the request).
 */
import { readFileSync } from 'node:fs';
import { computeAllHiddenStates, computeRouterLogits } from '../libs/forward';
import { readGates } from '../libs/stages';
import { mergedModel } from '../libs/stages';
import type { MergePlan } from '../libs/plan';

export interface ReportChildResult {
  seconds: number;
  /** VmHWM of this process. */
  peakRssKiB: number;
}

function peakRssKiB(): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Number(m[1]);
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS;
}

async function main(): Promise<void> {
  const [mode, file] = process.argv.slice(2);
  const req = JSON.parse(readFileSync(file!, 'utf8')) as { ids: number[][]; plan?: MergePlan; planDir?: string; baseDir?: string };
  let t0: number;
  if (mode === 'merged') {
    const gates = await readGates(req.planDir!);
    t0 = performance.now();
    await computeRouterLogits(mergedModel(req.plan!, gates), req.ids);
  } else if (mode === 'base') {
    t0 = performance.now();
    await computeAllHiddenStates(req.baseDir!, req.ids);
  } else throw new Error('usage: report-child.ts merged|base <request.json>');
  const r: ReportChildResult = { seconds: (performance.now() - t0) / 1000, peakRssKiB: peakRssKiB() };
  process.stdout.write(JSON.stringify(r) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
