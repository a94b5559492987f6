import { dirname, join, resolve } from 'node:path';
import { parseYamlInput, readInputText, RECIPE } from '../../../libs/input';
import { ContentCache, defaultCacheDir } from '../../../libs/cache';
import { contentId } from '../../../libs/resolve';
import { parseModelReference, type ModelReferenceInput } from '../../../libs/resolve';
import { locateReference } from '../../../libs/resolve';
import { COMMIT_SHA, cachedCommit, writeRef } from '../../../libs/resolve';
import { modelInfo } from '@huggingface/hub';
import { hubFailure } from '../../../libs/resolve';
import { hubFetch } from '../../../libs/resolve';
import { hubSettings } from '../../../libs/resolve';
import { ModelError } from '../../../libs/errors';
import { modelFiles } from '../../../libs/resolve';

/**
 * One line per model of a recipe: `<reference> <content id>` for local folders (memoised by path and stat key,
 * libs/util/stat-key.js, so an unchanged model costs a stat per file), `<repo>@<commit>` for Hub models pinned to a commit (their
 * content), `<repo>@<branch> <commit>` for a branch or tag, resolved now (see branchCommit). Nothing here depends on where
 * the workspace lies, so the hash is the same in every clone.
 */
/**
 * The commit a branch or tag names now, so that fetch stays cached until the branch moves and then fetches the new
 * commit: asked of the hub with a short timeout and one retry (the cache's ref is updated); offline (HF_HUB_OFFLINE) or when the hub cannot answer, the commit the Hugging
 * Face cache recorded for it; neither: an error naming the repo and the ref.
 */
async function branchCommit(repo: string, revision: string, refText: string): Promise<string> {
  const base = hubSettings({ progress: false });
  const s = { ...base, metadataFirstByteMs: Math.min(base.metadataFirstByteMs, 10_000), timeoutMs: Math.min(base.timeoutMs, 10_000), retries: Math.min(base.retries, 1) };
  const cached = await cachedCommit(s.cacheDir, repo, revision);
  if (s.offline) {
    if (cached) return cached;
    throw new ModelError('hub_offline', `model ${refText}: HF_HUB_OFFLINE is set and the Hugging Face cache has no commit for ${repo}@${revision}`);
  }
  try {
    const info = await modelInfo({ hubUrl: s.hubUrl, fetch: hubFetch(s), name: repo, revision, additionalFields: ['sha'] });
    const sha = (info as { sha?: string }).sha;
    if (sha && COMMIT_SHA.test(sha)) {
      // As huggingface_hub does when online: the cache's ref follows the branch, so fetch (which prefers a complete
      // cached snapshot) downloads the commit this hash stands for.
      if (sha !== cached) await writeRef(s.cacheDir, repo, revision, sha).catch(() => undefined);
      return sha;
    }
    throw new ModelError('hub_error', `the hub at ${s.hubUrl} gave no commit for ${repo}@${revision}`);
  } catch (e) {
    if (cached) return cached;
    throw hubFailure(e, `${repo}@${revision}`, s, `resolve ${repo}@${revision} to a commit`);
  }
}

export default async function modelIds(args: string[]): Promise<{ text: string; deps: string[] | null }> {
  const recipeFile = resolve(args[0] ?? 'moe.yml');
  // The recipe reader's limits: a FIFO or an alias bomb in place of the recipe must not hang or exhaust Nx.
  const doc = parseYamlInput(await readInputText(recipeFile, RECIPE), recipeFile, RECIPE).data as Record<string, unknown> | null;
  const list = (v: unknown) => (Array.isArray(v) ? v : []).map((e) => (e && typeof e === 'object' ? (e as { source_model?: unknown }).source_model : undefined));
  const inputs = [doc?.base_model, ...list(doc?.experts), ...list(doc?.shared_experts)];
  const cache = new ContentCache(defaultCacheDir(process.cwd()));
  const lines: string[] = [];
  const seen = new Set<string>();
  // What the lines depend on, for model-ids.ts's memo: the recipe, each local model's folder (a file added or
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
      } else if (ref.revision && COMMIT_SHA.test(ref.revision)) {
        deps?.push(resolve(dirname(recipeFile), ref.path));
        line = `${loc.repo}@${ref.revision}`;
      } else {
        // A branch can move: never memoised, resolved on every build.
        const rev = ref.revision ?? 'main';
        line = `${loc.repo}@${rev} ${await branchCommit(loc.repo, rev, ref.raw)}`;
        deps = null;
      }
    } catch (e) {
      deps = null;
      // Absolute paths differ between clones; the hash must not.
      line = `${JSON.stringify(input)}: ${(e as Error).message.replace(/(^|[\s("'])\/[^\s"']+/g, '$1<path>')}`;
    }
    if (!seen.has(line)) lines.push(line);
    seen.add(line);
  }
  return { text: lines.join('\n') + '\n', deps };
}
