import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ModelError, RecipeError } from '../errors';
import { readRecipe, type ParsedRecipe } from '../recipe/parse';
import { parseModelRef, refKey, resolveLocal } from '../recipe/reference';
import { checkRecipe } from '../recipe/validate';
import { dtypeFromName } from '../safetensors/dtype';
import { selectArchitecture } from '../architectures/registry';
import type { ArchContext, ExpertSource, ModelSource, OutputArchitecture } from '../architectures/types';
import { checkModelsAgree, openModel } from './models';

export interface ResolvedModel {
  key: string;
  ref: string;
  dir: string;
  source: 'local' | 'cache' | 'download';
  revision: string | null;
  contentId?: string;
}

export interface ModelsFile {
  version: 1;
  models: ResolvedModel[];
}

export interface LoadOptions {
  /** Relative local model paths are resolved against this folder. */
  modelBaseDir: string;
  allowIdenticalModels?: boolean;
  layout?: 'classic' | 'fused';
  seed?: number;
}

export interface MergeContext {
  parsed: ParsedRecipe;
  ctx: ArchContext;
  arch: OutputArchitecture;
  warnings: string[];
  /** Gate rows: routed experts, then the shared experts that are gated. */
  gatedExperts: ExpertSource[];
}

/** Every distinct model reference of a recipe, keyed as the reference compares them. */
export function recipeModelRefs(parsed: ParsedRecipe, modelBaseDir: string): { key: string; ref: string; path: string; revision: string | null }[] {
  const r = parsed.recipe;
  const all = [
    { input: r.base_model, field: 'base_model' },
    ...r.experts.map((e, i) => ({ input: e.source_model, field: `experts[${i}].source_model` })),
    ...(r.shared_experts ?? []).map((e, i) => ({ input: e.source_model, field: `shared_experts[${i}].source_model` })),
  ];
  const seen = new Map<string, { key: string; ref: string; path: string; revision: string | null }>();
  for (const { input, field } of all) {
    const m = resolveLocal(parseModelRef(input, field, parsed.file), modelBaseDir);
    const key = refKey(m);
    if (!seen.has(key)) seen.set(key, { key, ref: m.display, path: m.path, revision: m.revision });
  }
  return [...seen.values()];
}

export function modelKeyOf(parsed: ParsedRecipe, input: Parameters<typeof parseModelRef>[0], field: string, modelBaseDir: string): string {
  return refKey(resolveLocal(parseModelRef(input, field, parsed.file), modelBaseDir));
}

export function outputDtype(parsed: ParsedRecipe, base: ModelSource): string | null {
  if (parsed.recipe.dtype) {
    try {
      return dtypeFromName(parsed.recipe.dtype);
    } catch (e) {
      throw new RecipeError('bad_dtype', (e as Error).message, { file: parsed.file, field: 'dtype', ...parsed.position(['dtype']) });
    }
  }
  if (base.config.dtype) {
    try {
      return dtypeFromName(base.config.dtype);
    } catch {
      throw new ModelError('bad_dtype', `Unimplemented dtype "${base.config.dtype}"`, { file: base.config.file, field: 'torch_dtype' });
    }
  }
  return null;
}

/**
 * Opens every model of the recipe, checks the recipe (spec 1.3), the models' agreement and the output
 * architecture: everything that can fail does so here, before any heavy work or output.
 */
export async function loadMergeContext(parsed: ParsedRecipe, models: ResolvedModel[], opts: LoadOptions): Promise<MergeContext> {
  checkRecipe(parsed, { allowIdenticalModels: opts.allowIdenticalModels });
  const r = parsed.recipe;
  const byKey = new Map<string, ModelSource>();
  for (const m of models) byKey.set(m.key, { ...(await openModel(m.key, m.ref, m.dir)), contentId: m.contentId });
  const get = (input: Parameters<typeof parseModelRef>[0], field: string) => {
    const key = modelKeyOf(parsed, input, field, opts.modelBaseDir);
    const m = byKey.get(key);
    if (!m) throw new ModelError('unresolved_model', `model ${key} was not resolved by the fetch stage (re-run fetch)`, { file: parsed.file, field });
    return m;
  };
  const base = get(r.base_model, 'base_model');
  const experts: ExpertSource[] = r.experts.map((spec, index) => ({ spec, index, shared: false, model: get(spec.source_model, `experts[${index}].source_model`) }));
  const shared: ExpertSource[] = (r.shared_experts ?? []).map((spec, index) => ({ spec, index, shared: true, model: get(spec.source_model, `shared_experts[${index}].source_model`) }));
  checkModelsAgree(base, [
    ...experts.map((e) => ({ model: e.model, role: `experts[${e.index}]` })),
    ...shared.map((e) => ({ model: e.model, role: `shared_experts[${e.index}]` })),
  ]);
  const ctx: ArchContext = {
    recipe: r,
    gateMode: r.gate_mode,
    base,
    experts,
    shared,
    outDtype: outputDtype(parsed, base),
    layout: opts.layout ?? 'classic',
    seed: opts.seed ?? 0,
  };
  const { arch, warnings } = selectArchitecture(ctx, parsed.file);
  const nShared = arch.gatedSharedExperts(ctx);
  const gatedExperts = [...experts, ...shared.slice(0, nShared)];
  const E = experts.length;
  if (arch.warnExpertCount && (E & (E - 1)) !== 0) {
    warnings.push(`Your model has ${E} experts, which is not a power of two. The model will not be usable in llama.cpp.`);
  }
  return { parsed, ctx, arch, warnings, gatedExperts };
}

export async function readModelsFile(file: string): Promise<ModelsFile> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as ModelsFile;
  } catch (e) {
    throw new ModelError('missing_stage_output', `cannot read the fetch stage's output (${(e as Error).message}); run the fetch stage first`, { file });
  }
}

export { readRecipe, dirname, join };
