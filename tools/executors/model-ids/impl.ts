import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { parse } from 'yaml';
import { ContentCache, defaultCacheDir } from '../../../libs/cache';
import { contentId } from '../../../libs/resolve/content-id';
import { parseModelReference, type ModelReferenceInput } from '../../../libs/resolve/reference';
import { locateReference } from '../../../libs/resolve/resolve';
import { COMMIT_SHA } from '../../../libs/resolve/hf-cache';
import { modelFiles } from '../../../libs/resolve/files';

/**
 * One line per model of a recipe: `<reference> <content id>` for local folders (memoised by path, size, mtime and
 * inode, so an unchanged model costs a stat per file), `<repo>@<commit>` for Hub models pinned to a commit (their
 * content), `<repo>@<branch>` otherwise (the plugin does not cache such a fetch). Nothing here depends on where
 * the workspace lies, so the hash is the same in every clone.
 */
export default async function modelIds(args: string[]): Promise<{ text: string; deps: string[] | null }> {
  const recipeFile = resolve(args[0] ?? 'moe.yml');
  const doc = parse(await readFile(recipeFile, 'utf8')) as Record<string, unknown> | null;
  const list = (v: unknown) => (Array.isArray(v) ? v : []).map((e) => (e && typeof e === 'object' ? (e as { source_model?: unknown }).source_model : undefined));
  const inputs = [doc?.base_model, ...list(doc?.experts), ...list(doc?.shared_experts)];
  const cache = new ContentCache(defaultCacheDir(process.cwd()));
  const lines: string[] = [];
  const seen = new Set<string>();
  // What the lines depend on, for model-ids.js's memo: the recipe, each local model's folder (a file added or
  // removed) and files, and the path a Hub id would be found at locally. null: not memoised (an error).
  let deps: string[] | null = [recipeFile];
  for (const input of inputs) {
    if (input === undefined || input === null) continue;
    let line: string;
    try {
      const ref = parseModelReference(input as ModelReferenceInput);
      const loc = locateReference(ref, dirname(recipeFile));
      if (loc.kind === 'local') {
        line = `${ref.raw} ${await contentId(loc.dir, { cache })}`;
        deps?.push(loc.dir, ...(await modelFiles(loc.dir)).map((f) => join(loc.dir, f)));
      } else {
        deps?.push(resolve(dirname(recipeFile), ref.path));
        line = `${loc.repo}@${ref.revision ?? 'main'}${ref.revision && COMMIT_SHA.test(ref.revision) ? '' : ' (branch)'}`;
      }
    } catch (e) {
      deps = null;
      line = `${JSON.stringify(input)}: ${(e as Error).message.replace(/\/[^\s"]+/g, '<path>')}`;
    }
    if (!seen.has(line)) lines.push(line);
    seen.add(line);
  }
  return { text: lines.join('\n') + '\n', deps };
}
