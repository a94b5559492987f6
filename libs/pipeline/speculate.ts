/**
 * The command's speculated prompt-state pass: before fetch hashes the models (a cold 7B base is ~14 GB to read)
 * and the embed-prompts stage reads the cache, the forward worker is sent the prompts this run is expected to
 * miss, so the pass runs while this process hashes and reads. The stage's pass takes it when it covers the
 * stage's misses (libs/forward/isolated.ts); a wrong guess costs the work done before it is ended, never a state.
 */
import { join } from 'node:path';
import type { Recipe } from '../recipe';
import { readRecipe } from '../recipe';
import { modelKey } from '../stages';
import { loadTokenizer } from '../tokenizer';
import { speculatePromptStates } from '../forward';
import type { StageOptions } from '../options';

/** Every prompt of the recipe's experts and shared experts, each once, in order. */
export function recipePrompts(recipe: Recipe): string[] {
  const seen = new Set<string>();
  for (const e of [...recipe.experts, ...(recipe.shared_experts ?? [])]) for (const p of [...(e.positive_prompts ?? []), ...(e.negative_prompts ?? [])]) seen.add(p);
  return [...seen];
}

/**
 * The prompts a hidden-state run is expected to compute: all of them, less those of the recipe the output was
 * last built from (its mergekit_moe_config.yml) when that had the same base and gate mode (their states went
 * into the cache then). `before` null: no previous build, or not one we can read.
 */
export function expectedMisses(recipe: Recipe, before: Recipe | null, recompute: boolean): string[] {
  const all = recipePrompts(recipe);
  if (!before || recompute || JSON.stringify(before.base_model) !== JSON.stringify(recipe.base_model) || before.gate_mode !== recipe.gate_mode) return all;
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
 * Sends the expected misses of a hidden-state run to the waiting forward worker when the base is a local folder
 * and the pass is the CPU's exact one (the options the embed-prompts stage passes); returns how many prompts went.
 * Anything it cannot judge cheaply sends nothing: the stage computes as it would have.
 */
export async function speculateHiddenStates(recipe: Recipe, before: Recipe | null, modelBaseDir: string, options: Pick<StageOptions, 'device' | 'forwardPrecision' | 'recompute'>): Promise<number> {
  if ((options.device !== undefined && options.device !== 'cpu') || (options.forwardPrecision !== undefined && options.forwardPrecision !== 'fp32')) return 0;
  const texts = expectedMisses(recipe, before, options.recompute === true);
  if (texts.length === 0) return 0;
  let dir: string | null;
  try {
    dir = modelKey(recipe.base_model, modelBaseDir).localDir;
  } catch {
    return 0; // fetch says what is wrong with it
  }
  if (dir === null) return 0;
  let ids: number[][];
  try {
    const tok = await loadTokenizer(dir);
    ids = texts.map((t) => tok.encodePrompt(t));
  } catch {
    return 0;
  }
  // The options exactly as the stage's pass spells them (cachedHiddenStates): device resolved, precision named.
  return speculatePromptStates(dir, ids, { device: 'cpu', precision: 'fp32' }) ? ids.length : 0;
}
