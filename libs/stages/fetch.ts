import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ContentCache } from '../cache';
import { parseModelConfig } from '../model-folder/config';
import { checkRecipe } from '../recipe/validate';
import type { ParsedRecipe } from '../recipe/parse';
import { inspectModels, resolveModels, type ModelInspection } from '../resolve/resolve';
import type { HubEnv } from '../resolve/settings';
import { locate } from '../safetensors/reader';
import { ModelError } from '../errors';
import type { ModelSource } from '../architectures/types';
import { checkOutputPath } from './output-folder';
import { buildMergeContext, openSources, recipeModelRefs, type LoadOptions, type MergeContext, type ModelsFile, type ResolvedModel } from './context';

export interface FetchOptions extends LoadOptions {
  /** Folder of the content-id memo (cacache). */
  cacheDir: string;
  env?: HubEnv;
  fetch?: typeof fetch;
  log?: (line: string) => void;
  /** Problems the merge goes on from (an unusable cache); default: stderr. */
  warn?: (line: string) => void;
  /** The output folder the write stage will fill, checked here (before any download or forward pass). */
  output?: { path: string; recipeFile: string };
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
  checkRecipe(parsed, { allowIdenticalModels: opts.allowIdenticalModels });
  const refs = recipeModelRefs(parsed, opts.modelBaseDir);
  const cache = new ContentCache(opts.cacheDir, opts.warn);
  const resolveOpts = { baseDir: opts.modelBaseDir, cache, env: opts.env, fetch: opts.fetch };
  const inspections = await inspectModels(refs.map((r) => r.reference), resolveOpts);
  if (opts.output) {
    checkOutputPath(opts.output.path, [
      ...inspections.map((ins) => ({ label: `model folder of ${ins.ref}`, path: ins.dir })),
      { label: 'recipe', path: opts.output.recipeFile },
    ]);
  }
  buildMergeContext(parsed, new Map(refs.map((r, i) => [r.key, inspectedSource(r.key, inspections[i]!)])), opts);
  const resolved = await resolveModels(refs.map((r) => r.reference), resolveOpts);
  const models: ResolvedModel[] = resolved.map((m, i) => ({ key: refs[i]!.key, ref: refs[i]!.ref, dir: m.dir, source: m.source, revision: m.revision, contentId: m.contentId, bytes: m.bytes }));
  for (const [i, m] of resolved.entries()) {
    opts.log?.(`model ${refs[i]!.ref}: ${m.source === 'download' ? `downloaded ${size(m.downloadedBytes)}` : m.source}, ${size(m.bytes)}, ${m.dir}`);
    for (const w of m.warnings) opts.log?.(`WARNING: ${w}`);
  }
  const merge = buildMergeContext(parsed, await openSources(models), opts);
  const file: ModelsFile = { version: 1, models };
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, 'models.json'), JSON.stringify(file, null, 2) + '\n');
  return { models: file, merge };
}
