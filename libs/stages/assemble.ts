import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { hubCacheDir } from '../resolve';
import { portablePath, relativeToModel, type PathRoots } from '../resolve';
import { createHash } from 'node:crypto';
import type { MergePlan, PlanModel, ShardOrder } from '../plan';
import type { ResolvedModel } from './context';
import { PLAN_SCHEMA, readStageJson, refuseStageFile, writeStageFile } from '../stage-files';
import { unsafePathReason } from '../resolve';
import { openWeights } from '../model-folder';
import type { TensorIndex } from '../safetensors';
import type { MergeContext } from './context';
import type { GateTensor } from '../gates';
import { writeGates } from './build-gates';
import { numberForms } from '../json';
import { configFloatTest } from '../architectures';
import { assignTorchNoise, torchStateAfterGates } from '../noise';

export interface AssembleOptions {
  maxShardBytes: number;
  /** Default 'grouped'. */
  shardOrder?: ShardOrder;
  extraWarnings?: string[];
  /** Router weights; saved beside the plan so the write stage reads one stage's output. */
  gates?: GateTensor;
  /** What plan.json's paths are relative to (see libs/resolve/portable.ts); default: the working directory. */
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
  const config = arch.config(ctx);
  const tensors = arch.tensors(ctx);
  if (ctx.rng === 'torch') {
    // Noise continues the reference's one generator after its router draw.
    assignTorchNoise(ctx, arch, tensors, torchStateAfterGates(ctx.seed, ctx.gateMode, ctx.base.config.numLayers * merge.gatedExperts.length * ctx.base.config.hiddenSize));
  }
  const plan: MergePlan = {
    version: 1,
    architecture: arch.name,
    layout: ctx.layout,
    outDtype: ctx.outDtype,
    config,
    configNumbers: numberForms(config, { literals: ctx.base.config.literals, isFloat: configFloatTest(arch.floatKeys) }),
    models: [ctx.base, ...ctx.experts.map((e) => e.model), ...ctx.shared.map((e) => e.model)]
      .filter((m, i, all) => all.findIndex((x) => x.key === m.key) === i)
      .map((m) => ({ key: m.key, ref: m.ref, dir: m.dir, ...(m.contentId ? { contentId: m.contentId } : {}) })),
    tensors,
    maxShardBytes: opts.maxShardBytes,
    shardOrder: opts.shardOrder ?? 'grouped',
    warnings: [...merge.warnings, ...(opts.extraWarnings ?? [])],
  };
  await mkdir(outDir, { recursive: true });
  const roots = opts.roots ?? defaultRoots();
  await writeStageFile(join(outDir, 'plan.json'), JSON.stringify(portablePlan(plan, (d) => portablePath(d, roots))) + '\n');
  if (opts.gates) await writeGates(join(outDir, 'gates.safetensors'), opts.gates);
  return plan;
}

/**
 * plan.json with its paths local to this machine. A plan comes back from a cache (maybe a remote one someone else
 * writes), so it is checked before a byte is read through it: its models are the ones models.json resolved (their
 * folders taken from there, never from the plan), and each source part reads a tensor exactly where that model's
 * own headers put it (file, dtype, shape, offset, length). Anything else refuses the plan, naming the tensor.
 */
export async function readPlan(dir: string, models: readonly Pick<ResolvedModel, 'key' | 'ref' | 'dir' | 'contentId'>[]): Promise<MergePlan> {
  const file = join(dir, 'plan.json');
  const plan = await readStageJson<MergePlan>(file, PLAN_SCHEMA, 1, 'assemble-experts');
  const resolved = new Map(models.map((m) => [m.key, m]));
  for (const m of plan.models) {
    const r = resolved.get(m.key);
    if (!r) throw refuseStageFile(file, `model ${m.ref} (${m.key}) is not one of the models models.json resolved`);
    if (m.contentId && r.contentId && m.contentId !== r.contentId) throw refuseStageFile(file, `model ${m.ref} has content ${m.contentId.slice(0, 12)} in the plan but ${r.contentId.slice(0, 12)} in models.json`);
    m.dir = r.dir;
  }
  if (plan.models[0]!.key !== models[0]?.key) throw refuseStageFile(file, `its first model (the base, whose tokenizer is copied) is ${plan.models[0]!.ref}, but models.json's base is ${models[0]?.ref}`);
  const weights = new Map<string, Promise<TensorIndex>>();
  const weightsOf = (m: PlanModel) => weights.get(m.key) ?? weights.set(m.key, openWeights(m.dir, m.ref)).get(m.key)!;
  const byKey = new Map(plan.models.map((m) => [m.key, m]));
  for (const t of plan.tensors) {
    const elements = t.shape.reduce((a, b) => a * b, 1);
    for (const p of t.parts) {
      if (p.kind === 'zeros' && p.elements > elements) throw refuseStageFile(file, `${p.elements} zeros planned for a tensor of ${elements} elements`, { tensor: t.name });
      if (p.kind !== 'source') continue;
      const m = byKey.get(p.model);
      if (!m) throw refuseStageFile(file, `source ${p.tensor} names model ${p.model}, which the plan does not list`, { tensor: t.name });
      const notOurs = () => refuseStageFile(file, `reads ${p.file}, which is not a file of the resolved models`, { tensor: t.name });
      // A file of the model: a plain relative path inside its folder, never absolute, never `..` out.
      if (unsafePathReason(p.file) !== null) throw notOurs();
      const abs = join(m.dir, p.file);
      const index = await weightsOf(m);
      if (!index.has(p.tensor)) throw refuseStageFile(file, `reads ${p.tensor}, which model ${m.ref} does not hold`, { tensor: t.name });
      const loc = index.get(p.tensor);
      if (loc.file !== abs) throw loc.file.startsWith(m.dir) && existsSync(abs) ? refuseStageFile(file, `reads ${p.tensor} from ${p.file}, but model ${m.ref} holds it in ${relativeToModel(loc.file, m.dir)}`, { tensor: t.name }) : notOurs();
      const got = { dtype: p.dtype, shape: p.shape, offset: p.offset, byteLength: p.byteLength };
      const want = { dtype: loc.dtype, shape: loc.shape, offset: loc.offset, byteLength: loc.byteLength };
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        throw refuseStageFile(file, `reads ${p.tensor} of ${m.ref} as ${JSON.stringify(got)}, but its header gives ${JSON.stringify(want)}`, { tensor: t.name });
      }
      if (p.shape.reduce((a, b) => a * b, 1) > elements) throw refuseStageFile(file, `source ${p.tensor} has more elements than the tensor`, { tensor: t.name });
      p.file = abs;
    }
  }
  return plan;
}

/** The router rows a plan emits exist in the gate tensor it is written with (both come back from a cache). */
export function checkPlanGates(plan: MergePlan, gates: GateTensor, file: string): void {
  for (const t of plan.tensors) {
    for (const p of t.parts) {
      if (p.kind !== 'gates') continue;
      if (p.layer >= gates.layers || p.rows.some((r) => r >= gates.experts) || t.shape[t.shape.length - 1] !== gates.hidden) {
        throw refuseStageFile(file, `emits rows [${p.rows.join(', ')}] of layer ${p.layer} as [${t.shape.join(', ')}], but the gates are [${gates.layers}, ${gates.experts}, ${gates.hidden}]`, { tensor: t.name });
      }
    }
  }
}

/**
 * Hash of everything that decides the output bytes (the write stage skips when it is unchanged): the plan
 * without where the models lie on this machine, so the same merge stamps the same output anywhere.
 */
export function planHash(plan: MergePlan, extra: unknown): string {
  return createHash('sha256').update(JSON.stringify(portablePlan(plan, () => undefined))).update(JSON.stringify(extra)).digest('hex');
}
