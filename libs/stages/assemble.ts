import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { hubCacheDir } from '../resolve/settings';
import { localPath, portablePath, relativeToModel, type PathRoots } from './portable';
import { createHash } from 'node:crypto';
import type { MergePlan } from '../plan/types';
import type { MergeContext } from './context';
import type { GateTensor } from '../gates';
import { writeGates } from './build-gates';

export interface AssembleOptions {
  maxShardBytes: number;
  extraWarnings?: string[];
  /** Router weights; saved beside the plan so the write stage reads one stage's output. */
  gates?: GateTensor;
  /** What plan.json's paths are relative to (see portable.ts); default: the working directory. */
  roots?: PathRoots;
}

const defaultRoots = (): PathRoots => ({ workspace: process.cwd(), hubCache: hubCacheDir() });

/** The plan with every model folder portable and every source file relative to its model folder. */
function portablePlan(plan: MergePlan, dirOf: (dir: string) => string | undefined): MergePlan {
  const dirs = new Map(plan.models.map((m) => [m.key, m.dir]));
  return {
    ...plan,
    models: plan.models.map((m) => {
      const dir = dirOf(m.dir);
      return dir === undefined ? { key: m.key, ref: m.ref, ...(m.contentId ? { contentId: m.contentId } : {}) } : { ...m, dir };
    }) as MergePlan['models'],
    tensors: plan.tensors.map((t) => ({ ...t, parts: t.parts.map((p) => (p.kind === 'source' ? { ...p, file: relativeToModel(p.file, dirs.get(p.model)!) } : p)) })),
  };
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
    warnings: [...merge.warnings, ...(opts.extraWarnings ?? [])],
  };
  await mkdir(outDir, { recursive: true });
  const roots = opts.roots ?? defaultRoots();
  await writeFile(join(outDir, 'plan.json'), JSON.stringify(portablePlan(plan, (d) => portablePath(d, roots))) + '\n');
  if (opts.gates) await writeGates(join(outDir, 'gates.safetensors'), opts.gates);
  return plan;
}

/** plan.json with its paths local to this machine; `models` (from models.json) gives hub models' folders here. */
export async function readPlan(dir: string, roots: PathRoots = defaultRoots(), models?: { key: string; dir: string }[]): Promise<MergePlan> {
  const plan = JSON.parse(await readFile(join(dir, 'plan.json'), 'utf8')) as MergePlan;
  const here = new Map(models?.map((m) => [m.key, m.dir]));
  for (const m of plan.models) m.dir = here.get(m.key) ?? localPath(m.dir, roots);
  const dirs = new Map(plan.models.map((m) => [m.key, m.dir]));
  for (const t of plan.tensors) for (const p of t.parts) if (p.kind === 'source' && !isAbsolute(p.file)) p.file = join(dirs.get(p.model)!, p.file);
  return plan;
}

/**
 * Hash of everything that decides the output bytes (the write stage skips when it is unchanged): the plan
 * without where the models lie on this machine, so the same merge stamps the same output anywhere.
 */
export function planHash(plan: MergePlan, extra: unknown): string {
  return createHash('sha256').update(JSON.stringify(portablePlan(plan, () => undefined))).update(JSON.stringify(extra)).digest('hex');
}
