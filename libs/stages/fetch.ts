import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ContentCache } from '../cache';
import { parseModelConfig } from '../model-folder';
import { checkRecipe } from '../recipe';
import { refusePlaceholders } from '../recipe';
import type { ParsedRecipe } from '../recipe';
import { inspectModels, resolveModel, resolveModels, type ModelInspection } from '../resolve';
import { parseModelReference } from '../resolve';
import { existsSync } from 'node:fs';
import { fileKey } from '../util';
import { writeStageFile } from '../stage-files';
import type { HubEnv } from '../resolve';
import { locate } from '../safetensors';
import { ModelError } from '../errors';
import type { ModelSource } from '../architectures';
import { checkOutputPath, checkOwner, readStampSync } from '../output-folder';
import { hubSettings } from '../resolve';
import { portablePath } from '../resolve';
import { cachedModelDir } from '../resolve';
import { buildMergeContext, modelsFileOnDisk, openSources, recipeModelRefs, type LoadOptions, type MergeContext, type ModelsFile, type ResolvedModel } from './context';

export interface FetchOptions extends LoadOptions {
  /** Where models.json's paths are relative to (default: modelBaseDir); see libs/resolve/portable.ts. */
  root?: string;
  /** Folder of the content-id memo (cacache). */
  cacheDir: string;
  env?: HubEnv;
  fetch?: typeof fetch;
  log?: (line: string) => void;
  /** Problems the merge goes on from (an unusable cache); default: stderr. */
  warn?: (line: string) => void;
  /**
   * The output folder the write stage will fill and the other paths the run writes (the routing report), checked
   * here against every input and the cache, before any download or forward pass.
   */
  output?: { path: string; recipeFile: string; evalPrompts?: string; reports?: { path: string; label: string }[]; overwrite?: boolean; stagesDir?: string };
  /** Hash every model file again (the content-id memo is not read). */
  recompute?: boolean;
  /** Refuse the recipe generator's placeholder prompts (default true). */
  refusePlaceholders?: boolean;
  /** What this run did (downloaded or found in the cache, and where); default: log. Nx replays a cached
   * stage's output on any machine, where this would be stale, so the executor sends it to debug output. */
  stats?: (line: string) => void;
  /** -vv detail. */
  debug?: (line: string) => void;
}

/** A model known from its config and safetensors headers only (nothing downloaded yet). */
function inspectedSource(key: string, ins: ModelInspection): ModelSource {
  const config = parseModelConfig(ins.config, join(ins.dir, 'config.json'));
  const headers = new Map(ins.weightFiles.map((f) => [f.name, f.header]));
  const weights: ModelSource['weights'] = {
    has: (name) => ins.tensors.has(name),
    get(name) {
      const t = ins.tensors.get(name);
      if (!t) {
        const files = ins.weightFiles.map((f) => f.name);
        const where = files.length === 1 ? join(ins.dir, files[0]!) : ins.dir;
        throw new ModelError('missing_tensor', `tensor is missing from model ${ins.ref}${files.length > 1 ? ` (none of ${files.join(', ')} holds it)` : ''}`, { file: where, tensor: name });
      }
      const header = headers.get(t.file);
      const info = header?.tensors.get(name);
      if (header && info) return locate(join(ins.dir, t.file), header, info);
      return { name, dtype: t.dtype, shape: t.shape, begin: 0, end: 0, file: join(ins.dir, t.file), offset: -1, byteLength: 0 };
    },
  };
  return { key, ref: ins.ref, dir: ins.dir, config, weights };
}

const size = (bytes: number) => (bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} kB`);

/**
 * Stage 1: every model's config.json and safetensors headers first (range requests for Hub models), every
 * check of the recipe against them, and only then the weights; writes models.json with content ids.
 */
export async function runFetch(parsed: ParsedRecipe, outDir: string, opts: FetchOptions): Promise<{ models: ModelsFile; merge: MergeContext }> {
  const { refs, resolveOpts } = await inspectRecipeModels(parsed, opts);
  const resolved = await resolveModels(refs.map((r) => r.reference), resolveOpts);
  const models: ResolvedModel[] = resolved.map((m, i) => ({ key: refs[i]!.key, ref: refs[i]!.ref, dir: m.dir, source: m.source, revision: m.revision, contentId: m.contentId, bytes: m.bytes }));
  const roots = { workspace: opts.root ?? opts.modelBaseDir, hubCache: hubSettings({ env: opts.env }).cacheDir };
  // Nx replays this output on a cache hit, on any machine: it says what the models are, not what this run did.
  for (const [i, m] of resolved.entries()) {
    opts.log?.(`model ${refs[i]!.ref}: ${m.source === 'local' ? portablePath(m.dir, roots) : `hub commit ${m.revision}`}, ${size(m.bytes)}, content ${m.contentId.slice(0, 12)}`);
    (opts.stats ?? opts.log)?.(`model ${refs[i]!.ref}: ${m.source === 'download' ? `downloaded ${size(m.downloadedBytes)} into` : m.source === 'cache' ? 'cache,' : 'local,'} ${m.dir}`);
    for (const w of m.warnings) opts.log?.(`WARNING: ${w}`);
  }
  const merge = buildMergeContext(parsed, await openSources(models), opts);
  const file: ModelsFile = { version: 1, models };
  await mkdir(outDir, { recursive: true });
  await writeStageFile(join(outDir, 'models.json'), JSON.stringify(modelsFileOnDisk(models, roots), null, 2) + '\n');
  return { models: file, merge };
}

/**
 * The merge context from the models' headers, after every check fetch makes before it hashes or downloads
 * anything, when every model's safetensors files are on this machine: a local folder, or a complete snapshot in
 * the Hugging Face cache (which fetch then takes offline); null otherwise. The command writes the shards that do
 * not hold the routers from it while fetch hashes the models (a first build over a 7B pair reads ~29 GB to hash
 * them). Its sources have no content ids yet. `unchanged(models)`, given fetch's models: whether each is the
 * folder the headers came from (a cache whose ref moved meanwhile gives another snapshot) and its weight files
 * are as they were (a model saved over meanwhile would leave bytes read at old offsets).
 */
export async function earlyMergeContext(parsed: ParsedRecipe, opts: FetchOptions): Promise<{ merge: MergeContext; unchanged: (models: readonly { key: string; dir: string }[]) => boolean } | null> {
  // A model fetch would download gives no early plan: nothing asked of the Hub here (fetch inspects it itself).
  if (!(await allOnThisMachine(parsed, opts))) return null;
  const { refs, inspections, inspected } = await inspectRecipeModels(parsed, opts);
  // A .bin checkpoint's tensors are located only once it is opened (its header is pickled).
  if (!inspections.every((ins) => (ins.source === 'local' || ins.source === 'cache') && ins.weightFiles.every((f) => f.header !== null))) return null;
  const dirs = new Map(refs.map((r, i) => [r.key, inspections[i]!.dir]));
  const files = inspections.flatMap((ins) => ins.weightFiles.map((f) => join(ins.dir, f.name)));
  const keys = files.map(fileKey);
  return {
    merge: inspected,
    unchanged: (models) => models.every((m) => dirs.get(m.key) === m.dir) && files.every((f, i) => keys[i] !== null && fileKey(f) === keys[i]),
  };
}

/**
 * Whether every model of the recipe is a local folder or complete in the Hugging Face cache (offline). A recipe
 * whose models cannot be named gives yes: inspectRecipeModels then says what is wrong.
 */
async function allOnThisMachine(parsed: ParsedRecipe, opts: FetchOptions): Promise<boolean> {
  let refs: ReturnType<typeof recipeModelRefs>;
  try {
    refs = recipeModelRefs(parsed, opts.modelBaseDir);
  } catch {
    return true;
  }
  for (const r of refs) if ((await cachedModelDir(r.reference, { baseDir: opts.modelBaseDir, env: opts.env })) === null) return false;
  return true;
}

/** What fetch checks from the recipe and the models' headers (nothing hashed, no weights downloaded), and the models' references. */
async function inspectRecipeModels(parsed: ParsedRecipe, opts: FetchOptions) {
  checkRecipe(parsed, { allowIdenticalModels: opts.allowIdenticalModels });
  if (opts.refusePlaceholders !== false) refusePlaceholders(parsed);
  const refs = recipeModelRefs(parsed, opts.modelBaseDir);
  const cache = new ContentCache(opts.cacheDir, opts.warn, { recompute: opts.recompute });
  const resolveOpts = { baseDir: opts.modelBaseDir, cache, env: opts.env, fetch: opts.fetch };
  const inspections = await inspectModels(refs.map((r) => r.reference), resolveOpts);
  if (opts.output) {
    const o = opts.output;
    const real = checkOutputPath(
      o.path,
      [
        ...inspections.map((ins) => ({ label: `model folder of ${ins.ref}`, path: ins.dir })),
        { label: 'recipe', path: o.recipeFile },
        ...(o.evalPrompts ? [{ label: 'eval prompts', path: o.evalPrompts }] : []),
      ],
      { files: o.reports, caches: [{ path: opts.cacheDir, label: 'prompt-state cache' }, ...(o.stagesDir ? [{ path: o.stagesDir, label: 'stage outputs folder' }] : [])], overwrite: o.overwrite },
    );
    // Another recipe's folder is refused now, not after the forward pass (the write checks again, under its lock).
    if (existsSync(real)) checkOwner(o.path, readStampSync(real), o.recipeFile, o.overwrite ?? false);
  }
  const inspected = buildMergeContext(parsed, new Map(refs.map((r, i) => [r.key, inspectedSource(r.key, inspections[i]!)])), opts);
  return { refs, resolveOpts, inspections, inspected };
}

/**
 * Hub models of a models.json restored from a cache (another machine's fetch) may be missing from this
 * machine's Hugging Face cache: download them at the recorded commit and check they are the same content.
 */
export async function ensureModelsPresent(models: ResolvedModel[], opts: { cacheDir: string; env?: HubEnv; fetch?: typeof fetch; log?: (line: string) => void }): Promise<void> {
  for (const m of models) {
    if (m.source === 'local' || existsSync(m.dir)) continue;
    const reference = { ...parseModelReference(m.ref), revision: m.revision };
    const got = await resolveModel(reference, { cache: new ContentCache(opts.cacheDir), env: opts.env, fetch: opts.fetch });
    if (m.contentId && got.contentId !== m.contentId) {
      throw new ModelError('content_changed', `model ${m.ref} at commit ${m.revision} has content ${got.contentId.slice(0, 12)} here but ${m.contentId.slice(0, 12)} in models.json; run the fetch stage again`, { file: got.dir });
    }
    opts.log?.(`model ${m.ref}: downloaded commit ${m.revision} (it was not in this machine's Hugging Face cache)`);
    m.dir = got.dir;
  }
}
