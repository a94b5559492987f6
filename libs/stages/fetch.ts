import { mkdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ModelError } from '../errors';
import type { ParsedRecipe } from '../recipe/parse';
import { loadMergeContext, recipeModelRefs, type LoadOptions, type MergeContext, type ModelsFile, type ResolvedModel } from './context';

export interface FetchOptions extends LoadOptions {
  log?: (line: string) => void;
}

/** Resolves every model reference to a folder. Local folders only until Hub resolution lands. */
export async function resolveModels(parsed: ParsedRecipe, opts: FetchOptions): Promise<ResolvedModel[]> {
  const out: ResolvedModel[] = [];
  for (const m of recipeModelRefs(parsed, opts.modelBaseDir)) {
    if (!existsSync(m.path)) {
      throw new ModelError('missing_model', `model ${m.ref} not found: no folder at ${m.path} (Hugging Face Hub downloads are not supported yet)`, { file: parsed.file });
    }
    out.push({ key: m.key, ref: m.ref, dir: m.path, source: 'local', revision: m.revision });
  }
  return out;
}

/** Stage 1: resolve the models, check everything that can be checked, write models.json. */
export async function runFetch(parsed: ParsedRecipe, outDir: string, opts: FetchOptions): Promise<{ models: ModelsFile; merge: MergeContext }> {
  const resolved = await resolveModels(parsed, opts);
  const merge = await loadMergeContext(parsed, resolved, opts);
  const models: ModelsFile = { version: 1, models: resolved };
  await mkdir(outDir, { recursive: true });
  await writeFile(join(outDir, 'models.json'), JSON.stringify(models, null, 2) + '\n');
  for (const m of resolved) opts.log?.(`model ${m.ref}: ${m.source} ${m.dir}`);
  return { models, merge };
}
