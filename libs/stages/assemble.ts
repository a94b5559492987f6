import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { MergePlan, ShardOrder } from '../plan/types';
import type { MergeContext } from './context';
import type { GateTensor } from '../gates';
import { writeGates } from './build-gates';

export interface AssembleOptions {
  maxShardBytes: number;
  /** Default 'grouped'. */
  shardOrder?: ShardOrder;
  extraWarnings?: string[];
  /** Router weights; saved beside the plan so the write stage reads one stage's output. */
  gates?: GateTensor;
}

/** Stage 4: the output architecture's config.json and every output tensor with its sources, in write order. */
export async function runAssemble(merge: MergeContext, outDir: string, opts: AssembleOptions): Promise<MergePlan> {
  const { ctx, arch } = merge;
  const plan: MergePlan = {
    version: 1,
    architecture: arch.name,
    layout: ctx.layout,
    outDtype: ctx.outDtype,
    config: arch.config(ctx),
    models: [ctx.base, ...ctx.experts.map((e) => e.model), ...ctx.shared.map((e) => e.model)]
      .filter((m, i, all) => all.findIndex((x) => x.key === m.key) === i)
      .map((m) => ({ key: m.key, ref: m.ref, dir: m.dir, ...(m.contentId ? { contentId: m.contentId } : {}) })),
    tensors: arch.tensors(ctx),
    maxShardBytes: opts.maxShardBytes,
    shardOrder: opts.shardOrder ?? 'grouped',
    warnings: [...merge.warnings, ...(opts.extraWarnings ?? [])],
  };
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, 'plan.json'), JSON.stringify(plan) + '\n');
  if (opts.gates) await writeGates(join(outDir, 'gates.safetensors'), opts.gates);
  return plan;
}

export async function readPlan(dir: string): Promise<MergePlan> {
  return JSON.parse(await readFile(join(dir, 'plan.json'), 'utf8')) as MergePlan;
}

/** Hash of everything that decides the output bytes (the write stage skips when it is unchanged). */
export function planHash(plan: MergePlan, extra: unknown): string {
  return createHash('sha256').update(JSON.stringify(plan)).update(JSON.stringify(extra)).digest('hex');
}
