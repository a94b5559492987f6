/**
 * What a run of the command is expected to compute, judged from the recipe the output was last built from, and
 * the speculated prompt-state pass: before fetch hashes the models (a cold 7B base is ~14 GB to read)
 * and the embed-prompts stage reads the cache, the forward worker is sent the prompts this run is expected to
 * miss, so the pass runs while this process hashes and reads. The stage's pass takes it when it covers the
 * stage's misses (libs/forward/isolated.ts); a wrong guess costs the work done before it is ended, never a state.
 */
import { join } from 'node:path';
import type { Recipe } from '../recipe';
import { readRecipe } from '../recipe';
import { cachedModelDir, memoisedContentId, type HubEnv } from '../resolve';
import { promptIds } from '../tokenizer';
import { speculatePromptStates, stopForwardWorker } from '../forward';
import { ContentCache } from '../cache';
import { heldPuts, promptIdsMemo, promptStateKey } from '../prompt-cache';
import type { StageOptions } from '../options';

/** Every expert of the recipe, routed and shared: those whose prompts may need states. */
const gatedSpecs = (recipe: Recipe) => [...recipe.experts, ...(recipe.shared_experts ?? [])];
const promptsOf = (e: Recipe['experts'][number]) => [...(e.positive_prompts ?? []), ...(e.negative_prompts ?? [])];

/** Every prompt of the recipe's experts and shared experts, each once, in order. */
export function recipePrompts(recipe: Recipe): string[] {
  return [...new Set(gatedSpecs(recipe).flatMap(promptsOf))];
}

/** Whether the output was last built (`before`, its recipe) from the same base and gate mode: its states went into the cache. */
function sameBase(recipe: Recipe, before: Recipe | null): before is Recipe {
  return before !== null && JSON.stringify(before.base_model) === JSON.stringify(recipe.base_model) && before.gate_mode === recipe.gate_mode;
}

/**
 * Whether this run may compute prompt states, judged cheaply before anything is resolved: not when the output was
 * last built from the same base and gate mode and every prompt of this recipe, with its expert's model (fitted
 * routers' states depend on it; the states are in the cache unless it was emptied). A guess that only decides
 * whether the forward worker boots ahead: a wrong one costs that boot, or its head start.
 */
export function mayComputeStates(recipe: Recipe, before: Recipe | null): boolean {
  if (!sameBase(recipe, before)) return true;
  const pairs = (r: Recipe) => new Set(gatedSpecs(r).flatMap((e) => promptsOf(e).map((p) => JSON.stringify([e.source_model, p]))));
  const had = pairs(before);
  return [...pairs(recipe)].some((p) => !had.has(p));
}

/**
 * The prompts a hidden-state run is expected to compute: all of them, less those of the recipe the output was
 * last built from when that had the same base and gate mode (hidden states depend on the base and the text alone).
 */
export function expectedMisses(recipe: Recipe, before: Recipe | null, recompute: boolean): string[] {
  const all = recipePrompts(recipe);
  if (recompute || !sameBase(recipe, before)) return all;
  const had = new Set(recipePrompts(before));
  return all.filter((p) => !had.has(p));
}

/** The recipe the output folder was last built from, or null. */
export async function previousRecipe(outPath: string): Promise<Recipe | null> {
  try {
    return (await readRecipe(join(outPath, 'mergekit_moe_config.yml'))).recipe;
  } catch {
    return null;
  }
}

/**
 * Sends the expected misses of a hidden-state run to the waiting forward worker when the base is a local folder or
 * complete in the Hugging Face cache (`env`: the Hub's settings) and the pass runs on the CPU (in the arithmetic
 * the embed-prompts stage asks for); returns how many prompts went. Anything it cannot judge cheaply sends nothing:
 * the stage computes as it would have.
 */
export async function speculateHiddenStates(recipe: Recipe, before: Recipe | null, modelBaseDir: string, options: Pick<StageOptions, 'device' | 'forwardPrecision' | 'recompute'>, cacheDir: string, env?: HubEnv): Promise<number> {
  if (options.device !== undefined && options.device !== 'cpu') return 0;
  const precision = options.forwardPrecision ?? 'fp32';
  const texts = expectedMisses(recipe, before, options.recompute === true);
  if (texts.length === 0) return 0;
  // A local folder, or a complete snapshot in the Hugging Face cache (the folder fetch takes then, offline).
  const dir = await cachedModelDir(recipe.base_model, { baseDir: modelBaseDir, env });
  if (dir === null) return 0; // fetch downloads it, or says what is wrong with it
  let ids: number[][];
  // What the memo lacked (ids, the tokenizer's compact form) is stored once the prompts are sent: the worker
  // waited for those writes.
  let store = (): void => undefined;
  try {
    // Where the base's content id is known without hashing (its files' hashes memoised), the prompts whose
    // states the cache already holds are not sent; none left: the worker is stopped now rather than once the
    // stage has read them all (a fully cached edit took 0.2 s longer beside a worker loading its first layer).
    const cache = new ContentCache(cacheDir, undefined, { recompute: options.recompute, quiet: true });
    const writes = heldPuts(promptIdsMemo(cache));
    store = writes.flush;
    const tok = await promptIds(dir, texts, writes.memo);
    const baseId = await memoisedContentId(dir, cache);
    ids = tok.ids;
    if (baseId !== null) {
      const held = await Promise.all(texts.map((t, i) => cache.mayHave(promptStateKey(baseId, tok.contentId, t, ids[i]!.length, precision))));
      ids = ids.filter((_, i) => !held[i]);
      if (ids.length === 0) {
        stopForwardWorker();
        store();
        return 0;
      }
    }
  } catch {
    store();
    return 0;
  }
  // The CPU's pass in the arithmetic asked for, as the stage asks for it (cachedHiddenStates).
  const sent = speculatePromptStates(dir, ids, { device: 'cpu', precision }) ? ids.length : 0;
  store();
  return sent;
}
