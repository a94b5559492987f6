import { RecipeError } from '../errors';
import { mixtral } from './mixtral';
import { deepseek } from './deepseek';
import { qwen2Moe } from './qwen2-moe';
import { qwen3Moe } from './qwen3-moe';
import type { ArchContext, OutputArchitecture } from './types';

/** Candidates in the reference's order. */
export const ARCHITECTURES: OutputArchitecture[] = [mixtral, deepseek, qwen2Moe, qwen3Moe];

/** The names `architecture:` is matched against, in candidate order. */
export const ARCHITECTURE_NAMES: readonly string[] = ARCHITECTURES.map((a) => a.name);

export { mixtral, deepseek, qwen2Moe, qwen3Moe };

export interface Selection {
  arch: OutputArchitecture;
  warnings: string[];
  /** Why this one: what the recipe asked, which fit and why the others did not (debug output). */
  why: string;
}

/**
 * Spec 3.1: filter by case-insensitive prefix of `architecture`, then by what each accepts; prefer
 * Mixtral, else the first. Unlike the reference, the reasons for every rejection are always shown.
 */
export function selectArchitecture(ctx: ArchContext, file?: string, registry: OutputArchitecture[] = ARCHITECTURES): Selection {
  const wanted = ctx.recipe.architecture ?? null;
  const list = `All supported output architectures:\n${registry.map((a) => `  * ${a.name}`).join('\n')}`;
  const named = wanted === null ? registry : registry.filter((a) => a.name.toLowerCase().startsWith(wanted.toLowerCase()));
  if (named.length === 0) {
    throw new RecipeError('no_architecture', `No output architecture found that matches the given architecture: ${wanted}\n${list}`, { file, field: 'architecture' });
  }
  const reasons: string[] = [];
  const ok = named.filter((a) => {
    const why = a.rejects(ctx);
    if (why) reasons.push(`  ${a.name}: ${why}`);
    return !why;
  });
  if (ok.length === 0) {
    throw new RecipeError('incompatible_architecture', `No output architecture found that is compatible with the given models.\n${list}\nWhy each was rejected:\n${reasons.join('\n')}`, { file, field: wanted === null ? undefined : 'architecture' });
  }
  const why = `${wanted === null ? 'the recipe names no architecture' : `the recipe asks for "${wanted}"`}; compatible: ${ok.map((a) => a.name).join(', ')}${reasons.length ? `; rejected: ${reasons.map((r) => r.trim()).join('; ')}` : ''}`;
  const m = ok.find((a) => a.name === 'Mixtral');
  if (m) return { arch: m, warnings: [], why: `${why}; Mixtral is preferred when it fits` };
  const warnings = ok.length > 1 ? [`Multiple output architectures found (${ok.map((a) => a.name).join(', ')}). Defaulting to ${ok[0]!.name}.`] : [];
  return { arch: ok[0]!, warnings, why: ok.length > 1 ? `${why}; the first compatible one` : why };
}
