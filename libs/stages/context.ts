import { homedir } from 'node:os';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { MODELS_SCHEMA, readStageJson, refuseStageFile } from '../stage-files';
import { COMMIT_SHA, snapshotDir } from '../resolve';
import { ModelError, RecipeError } from '../errors';
import type { ParsedRecipe } from '../recipe';
import { formatReference, parseModelReference, type ModelReference, type ModelReferenceInput } from '../resolve';
import { locateReference } from '../resolve';
import { checkRecipe } from '../recipe';
import { dtypeFromName, dtypeToTorchName, FLOAT_DTYPES, type FloatDtype } from '../safetensors';
import { selectArchitecture } from '../architectures';
import type { ArchContext, ExpertSource, ModelSource, OutputArchitecture, RngKind } from '../architectures';
import { checkModelsAgree, openModel } from './models';
import { checkModelTensors } from '../model-folder';
import { localPath, portablePath, type PathRoots } from '../resolve';

export interface ResolvedModel {
  key: string;
  ref: string;
  dir: string;
  source: 'local' | 'cache' | 'download';
  revision: string | null;
  contentId?: string;
  bytes?: number;
}

export interface ModelsFile {
  version: 1;
  models: ResolvedModel[];
}

/**
 * models.json as written: every path portable (see libs/resolve/portable.ts), and hub models' source 'hub' whether this run
 * downloaded them or found them cached, so the file (an input of every later stage) is the same on any machine.
 */
export interface ModelsFileOnDisk {
  version: 2;
  models: (Omit<ResolvedModel, 'source'> & { source: 'local' | 'hub' })[];
}

export interface LoadOptions {
  /** Relative local model paths are resolved against this folder. */
  modelBaseDir: string;
  allowIdenticalModels?: boolean;
  layout?: 'classic' | 'fused';
  seed?: number;
  /** Random draws: our per-tensor streams (default) or PyTorch's generator as the reference draws. */
  rng?: RngKind;
}

export interface MergeContext {
  parsed: ParsedRecipe;
  ctx: ArchContext;
  arch: OutputArchitecture;
  warnings: string[];
  /** Why this output architecture (debug output). */
  archWhy: string;
  /** Gate rows: routed experts, then the shared experts that are gated. */
  gatedExperts: ExpertSource[];
}

export interface RecipeModelRef {
  key: string;
  ref: string;
  reference: ModelReference;
  /** The local folder, or null for a Hub repo. */
  localDir: string | null;
}

/** Where a reference points: a local folder (as mergekit: an existing path wins) or a Hub repo@revision. */
export function modelKey(input: ModelReferenceInput, modelBaseDir: string): RecipeModelRef {
  const reference = parseModelReference(input);
  const loc = locateReference(reference, modelBaseDir);
  return loc.kind === 'local'
    ? { key: `local:${localKeyPath(reference.path, loc.dir, modelBaseDir)}`, ref: formatReference(reference), reference, localDir: loc.dir }
    : { key: `hub:${loc.repo}@${reference.revision ?? 'main'}`, ref: formatReference(reference), reference, localDir: null };
}

/** A local model's key names it as the recipe does (relative to the recipe), never by the checkout's location. */
function localKeyPath(written: string, dir: string, modelBaseDir: string): string {
  const posix = (p: string) => p.split(sep).join('/');
  if (written.startsWith('~/')) return `~/${posix(relative(homedir(), dir))}`;
  if (isAbsolute(written)) return dir;
  return posix(relative(modelBaseDir, dir)) || '.';
}

/** Every distinct model of a recipe, base first, then experts and shared experts in order. */
export function recipeModelRefs(parsed: ParsedRecipe, modelBaseDir: string): RecipeModelRef[] {
  const r = parsed.recipe;
  const all = [
    { input: r.base_model, field: 'base_model' },
    ...r.experts.map((e, i) => ({ input: e.source_model, field: `experts[${i}].source_model` })),
    ...(r.shared_experts ?? []).map((e, i) => ({ input: e.source_model, field: `shared_experts[${i}].source_model` })),
  ];
  const seen = new Map<string, RecipeModelRef>();
  for (const { input, field } of all) {
    let m: RecipeModelRef;
    try {
      m = modelKey(input, modelBaseDir);
    } catch (e) {
      if (e instanceof ModelError) throw new ModelError(e.code, e.message, { file: parsed.file, field, ...parsed.position(field.replace(/\[(\d+)\]/g, '.$1').split('.').map((x) => (/^\d+$/.test(x) ? Number(x) : x))) });
      throw e;
    }
    if (!seen.has(m.key)) seen.set(m.key, m);
  }
  return [...seen.values()];
}

/**
 * noise_scale and residual_scale are applied in float32 and written in the output dtype: a scale past either's
 * largest value writes inf weights. Refused with its place before any work (the written chunks are checked too).
 */
function checkScales(parsed: ParsedRecipe, experts: ExpertSource[], outDtype: FloatDtype | null): void {
  const limit = Math.min(FLOAT_DTYPES.F32.max, FLOAT_DTYPES[outDtype ?? 'F32'].max);
  const what = outDtype && FLOAT_DTYPES[outDtype].max < FLOAT_DTYPES.F32.max ? `the output dtype ${dtypeToTorchName(outDtype)}` : 'float32, in which it is applied';
  for (const e of experts) {
    for (const key of ['noise_scale', 'residual_scale'] as const) {
      const v = e.spec[key];
      if (v === null || v === undefined || Math.abs(v) <= limit) continue;
      const path = [e.shared ? 'shared_experts' : 'experts', e.index, key];
      throw new RecipeError('bad_scale', `${v} is beyond the largest value of ${what} (${limit.toPrecision(5)}): every weight it touches would be written as inf`, { file: parsed.file, field: `${path[0]}[${e.index}].${key}`, ...parsed.position(path) });
    }
  }
}

export function outputDtype(parsed: ParsedRecipe, base: ModelSource): FloatDtype | null {
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
 * Opens every model of the recipe, checks the recipe, the models' agreement and the output
 * architecture: everything that can fail does so here, before any heavy work or output.
 */
export async function loadMergeContext(parsed: ParsedRecipe, models: ResolvedModel[], opts: LoadOptions): Promise<MergeContext> {
  checkRecipe(parsed, { allowIdenticalModels: opts.allowIdenticalModels });
  return buildMergeContext(parsed, await openSources(models), opts);
}

/** The resolved models opened: configs and tensor tables (headers only). */
export async function openSources(models: ResolvedModel[]): Promise<Map<string, ModelSource>> {
  const byKey = new Map<string, ModelSource>();
  for (const m of models) byKey.set(m.key, { ...(await openModel(m.key, m.ref, m.dir)), contentId: m.contentId });
  return byKey;
}

/**
 * Checks the models' agreement and the output architecture, and plans every tensor once (which checks
 * every tensor name), for a recipe already checked: everything that can fail does so before heavy work.
 */
export function buildMergeContext(parsed: ParsedRecipe, byKey: Map<string, ModelSource>, opts: LoadOptions): MergeContext {
  const r = parsed.recipe;
  const get = (input: ModelReferenceInput, field: string) => {
    const key = modelKey(input, opts.modelBaseDir).key;
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
  for (const m of new Set([base, ...experts.map((e) => e.model), ...shared.map((e) => e.model)])) checkModelTensors(m.ref, m.config, m.weights);
  const ctx: ArchContext = {
    recipe: r,
    gateMode: r.gate_mode,
    base,
    experts,
    shared,
    outDtype: outputDtype(parsed, base),
    layout: opts.layout ?? 'classic',
    seed: opts.seed ?? 0,
    rng: opts.rng ?? 'stream',
  };
  checkScales(parsed, [...experts, ...shared], ctx.outDtype);
  const { arch, warnings, why: archWhy } = selectArchitecture(ctx, parsed.file);
  if (ctx.layout === 'fused' && !arch.fusedLayout) {
    warnings.push(`${arch.name} has no fused expert layout; writing its classic per-expert layout (as mergekit-moe does).`);
  } else if (ctx.layout === 'fused') {
    warnings.push(
      `--layout fused writes transformers 5's stacked expert tensors (mlp.experts.gate_up_proj/down_proj): transformers 4 does not read them ` +
        `(it initialises the experts at random, with no error)${arch.llamaCppReadsFused ? '' : ` and llama.cpp's convert_hf_to_gguf.py cannot convert a fused ${arch.name}`}; ` +
        `the default classic layout is read by transformers 4 and 5, llama.cpp and vLLM.`,
    );
  }
  arch.tensors(ctx);
  const nShared = arch.gatedSharedExperts(ctx);
  const gatedExperts = [...experts, ...shared.slice(0, nShared)];
  return { parsed, ctx, arch, warnings, archWhy, gatedExperts };
}

/** models.json with its paths made local to this machine (`roots`: see libs/resolve/portable.ts), checked as a stage file. */
export async function readModelsFile(file: string, roots: PathRoots): Promise<ModelsFile> {
  const disk = await readStageJson<ModelsFileOnDisk>(file, MODELS_SCHEMA, 2, 'fetch');
  return { version: 1, models: disk.models.map((m) => ({ ...m, dir: localPath(m.dir, roots), source: m.source === 'hub' ? 'cache' : 'local' })) };
}

/**
 * models.json comes back from a cache: its models must be the recipe's, each in the folder the recipe resolves to
 * here (a local folder as the recipe names it; a hub model's snapshot of the recorded commit in this machine's
 * Hugging Face cache), so that no stage reads a folder the recipe does not name.
 */
export function checkResolvedModels(file: string, models: ResolvedModel[], parsed: ParsedRecipe, modelBaseDir: string, roots: PathRoots): void {
  const refs = recipeModelRefs(parsed, modelBaseDir);
  const keys = (xs: { key: string }[]) => xs.map((x) => x.key).join(', ');
  if (keys(refs) !== keys(models)) throw refuseStageFile(file, `it lists the models ${keys(models)}, but the recipe's are ${keys(refs)}`);
  for (const [i, r] of refs.entries()) {
    const m = models[i]!;
    // The reference is what a missing hub model is downloaded by: it must be the recipe's.
    if (m.ref !== r.ref) throw refuseStageFile(file, `model ${r.key} is named ${JSON.stringify(m.ref)}, but the recipe names it ${JSON.stringify(r.ref)}`);
    let want: string;
    if (r.localDir !== null) want = r.localDir;
    else {
      const loc = locateReference(r.reference, modelBaseDir);
      const pinned = r.reference.revision !== null && COMMIT_SHA.test(r.reference.revision) ? r.reference.revision : null;
      if (m.revision === null || !COMMIT_SHA.test(m.revision) || (pinned !== null && m.revision !== pinned)) throw refuseStageFile(file, `model ${r.ref} has revision ${JSON.stringify(m.revision)}, expected ${pinned ?? 'a commit sha'}`);
      want = snapshotDir(roots.hubCache, loc.kind === 'hub' ? loc.repo : r.ref, m.revision);
    }
    if (resolve(m.dir) !== resolve(want)) throw refuseStageFile(file, `model ${r.ref} names the folder ${m.dir}, but the recipe resolves it to ${want}`);
  }
}

export function modelsFileOnDisk(models: ResolvedModel[], roots: PathRoots): ModelsFileOnDisk {
  return { version: 2, models: models.map((m) => ({ ...m, dir: portablePath(m.dir, roots), source: m.source === 'local' ? 'local' : 'hub' })) };
}
