import { RecipeError } from '../errors';
import type { ParsedRecipe } from './parse';
import { formatReference, parseModelReference } from '../resolve';
import { GATE_MODES, promptFreeModes } from '../gates';

export interface ValidateOptions {
  /** --i-understand-this-is-not-useful-without-training */
  allowIdenticalModels?: boolean;
}

/** The reference's is_bad_config checks (those on prompts, expert counts and identical models), with the same conditions. */
export function checkRecipe(parsed: ParsedRecipe, opts: ValidateOptions = {}): void {
  const { recipe, file } = parsed;
  const problems: { message: string; field: string; path: (string | number)[] }[] = [];
  const fail = (message: string, path: (string | number)[]) =>
    problems.push({ message, path, field: path.map((p) => (typeof p === 'number' ? `[${p}]` : p)).join('.').replace(/\.\[/g, '[') });

  if (recipe.experts_per_token < 1) fail(`Experts per token must be >= 1 (got ${recipe.experts_per_token})`, ['experts_per_token']);
  else if (recipe.experts.length < recipe.experts_per_token) {
    fail(`Must include at least as many experts as experts_per_token (${recipe.experts.length} experts, experts_per_token ${recipe.experts_per_token}).`, ['experts']);
  }
  if (problems.length === 0 && GATE_MODES[recipe.gate_mode].needsPrompts) {
    recipe.experts.forEach((e, i) => {
      if (!e.positive_prompts || e.positive_prompts.length === 0) {
        fail(`Expert ${i} has no positive prompts (gate_mode ${recipe.gate_mode} needs them; only "${promptFreeModes()}" does without).`, ['experts', i]);
      }
    });
    const sig = (e: (typeof recipe.experts)[number]) => JSON.stringify([e.positive_prompts ?? [], e.negative_prompts ?? []]);
    if (problems.length === 0 && recipe.experts.length > 0 && recipe.experts.every((e) => sig(e) === sig(recipe.experts[0]!))) {
      fail('Your positive and negative prompts are identical for all experts. This will not produce a functioning MoE: each expert needs its own positive prompts.', ['experts']);
    }
    const key = (i: number) => formatReference(parseModelReference(recipe.experts[i]!.source_model));
    if (!opts.allowIdenticalModels && recipe.experts.length > 0 && recipe.experts.every((_, i) => key(i) === key(0))) {
      fail('All of your expert models are the same. This will produce a model that uses more resources but gives the exact same output. If you plan to train the model after merging, proceed with the --i-understand-this-is-not-useful-without-training flag.', ['experts']);
    }
  }
  const shared = recipe.shared_experts ?? [];
  const withPrompts = shared.filter((e) => e.positive_prompts && e.positive_prompts.length > 0).length;
  if (withPrompts > 0 && withPrompts < shared.length) {
    fail('Must specify prompts for all shared experts or none, not a mix.', ['shared_experts']);
  }
  const fitMode = GATE_MODES[recipe.gate_mode].states === 'router_input';
  for (const field of ['fit_lambda', 'fit_states', 'fit_confidence'] as const) {
    if (recipe[field] != null && !fitMode) fail(`${field} is an option of gate_mode fit only (gate_mode is ${recipe.gate_mode})`, [field]);
  }
  const E = recipe.experts.length;
  if (fitMode && recipe.fit_confidence != null && E > 0 && recipe.fit_confidence <= 1 / E) {
    fail(`fit_confidence ${recipe.fit_confidence} must be more than 1/${E}, the top-1 probability of a uniform router over the ${E} experts`, ['fit_confidence']);
  }
  if (problems.length > 0) {
    const first = problems[0]!;
    const pos = parsed.position(first.path);
    const rest = problems.slice(1).map((p) => `\n  field ${p.field}: ${p.message}`).join('');
    throw new RecipeError('bad_config', first.message + rest, { file, field: first.field, ...pos });
  }
}
