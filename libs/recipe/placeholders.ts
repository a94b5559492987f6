import { RecipeError } from '../errors';
import type { ParsedRecipe } from './parse';

/** The recipe generator writes prompts starting with this; they say nothing about an expert. */
export const PLACEHOLDER_PROMPT = 'Replace me:';

/** A generated recipe builds only once its placeholder prompts are replaced by real ones. */
export function refusePlaceholders(parsed: ParsedRecipe): void {
  const r = parsed.recipe;
  const groups = [['experts', r.experts], ['shared_experts', r.shared_experts ?? []]] as const;
  for (const [group, list] of groups) {
    for (const [i, e] of list.entries()) {
      for (const kind of ['positive_prompts', 'negative_prompts'] as const) {
        const j = (e[kind] ?? []).findIndex((p) => p.trim().startsWith(PLACEHOLDER_PROMPT));
        if (j < 0) continue;
        throw new RecipeError(
          'placeholder_prompt',
          `still the generator's placeholder ("${e[kind]![j]}"): write prompts typical of this expert (the routers are built from them), then build again`,
          { file: parsed.file, field: `${group}[${i}].${kind}[${j}]`, ...parsed.position([group, i, kind, j]) },
        );
      }
    }
  }
}
