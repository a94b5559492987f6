import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRecipeText, checkRecipe, suggest } from '../../libs/recipe';

const F = '/recipes/moe.yml';
const good = `base_model: m/base
gate_mode: cheap_embed
experts:
  - source_model: m/a
    positive_prompts: ["code"]
  - source_model: m/b
    positive_prompts: ["chat"]
`;

function errorOf(text: string, opts = {}): Error {
  try {
    checkRecipe(parseRecipeText(text, F), opts);
  } catch (e) {
    return e as Error;
  }
  assert.fail('expected an error');
}

test('every field of the reference parses with its defaults', () => {
  const { recipe } = parseRecipeText(`base_model: m/base
experts:
  - source_model: {model: {path: m/a, revision: main}}
    positive_prompts: [x]
    negative_prompts: [y]
    noise_scale: 0.01
    residual_scale: 0.5
shared_experts:
  - source_model: m/s
    residual_scale: 0.1
architecture: deepseek
dtype: torch.bfloat16
`, F);
  assert.equal(recipe.gate_mode, 'hidden');
  assert.equal(recipe.experts_per_token, 2);
  assert.equal(recipe.experts[0]!.residual_scale, 0.5);
  assert.equal(recipe.shared_experts![0]!.residual_scale, 0.1);
  assert.equal(recipe.architecture, 'deepseek');
  for (const m of ['hidden', 'hidden_avg', 'hidden_last', 'cheap_embed', 'random', 'uniform_random']) {
    assert.equal(parseRecipeText(good.replace('cheap_embed', m), F).recipe.gate_mode, m);
  }
});

test('YAML syntax errors give file, line and column', () => {
  assert.match(errorOf('base_model: m/base\nexperts:\n  - source_model: [unclosed\n').message, /^\/recipes\/moe\.yml:\d+:\d+: invalid YAML/);
});

test('unknown keys are errors with a did-you-mean suggestion and the key position', () => {
  const e = errorOf(good.replace('gate_mode', 'gate_mod'));
  assert.match(e.message, /^\/recipes\/moe\.yml:2:1, field gate_mod: unknown key "gate_mod" \(did you mean "gate_mode"\?\)/);
  const e2 = errorOf(good.replace('    positive_prompts: ["chat"]', '    positve_prompts: ["chat"]'));
  assert.match(e2.message, /:7:5, field experts\[1\]\.positve_prompts: unknown key "positve_prompts" \(did you mean "positive_prompts"\?\)/);
});

test('an unknown gate mode is refused with the valid ones and a suggestion', () => {
  const e = errorOf(good.replace('cheap_embed', 'hiden'));
  assert.match(e.message, /:2:12, field gate_mode: unknown gate_mode "hiden" \(did you mean "hidden"\?\); expected one of hidden, hidden_avg/);
});

test('type errors name the field path', () => {
  const e = errorOf(good.replace('positive_prompts: ["code"]', 'positive_prompts: "code"'));
  assert.match(e.message, /:5:23, field experts\[0\]\.positive_prompts: expected array, received string/);
  assert.match(errorOf('experts: []\n').message, /field base_model: is required/);
  assert.match(errorOf(good + 'experts_per_token: 1.5\n').message, /field experts_per_token: must be an integer/);
  assert.match(errorOf(good + 'dtype: float8\n').message, /field dtype: expected one of bfloat16, float16, float32/);
});

test("the reference's is_bad_config checks, same conditions", () => {
  assert.match(errorOf(good + 'experts_per_token: 0\n').message, /:\d+:\d+, field experts_per_token: Experts per token must be >= 1/);
  assert.match(errorOf(good + 'experts_per_token: 3\n').message, /field experts: Must include at least as many experts as experts_per_token \(2 experts, experts_per_token 3\)/);
  assert.match(errorOf(good.replace('    positive_prompts: ["chat"]\n', '')).message, /field experts\[1\]: Expert 1 has no positive prompts/);
  assert.match(errorOf(good.replace('["chat"]', '["code"]')).message, /prompts are identical for all experts/);
  assert.match(errorOf(good.replace('source_model: m/b', 'source_model: m/a')).message, /All of your expert models are the same\..*--i-understand-this-is-not-useful-without-training/);
  assert.doesNotThrow(() => checkRecipe(parseRecipeText(good.replace('source_model: m/b', 'source_model: m/a'), F), { allowIdenticalModels: true }));
  // random skips every later check (the reference's is_bad_config); uniform_random does not.
  const noPrompts = 'base_model: m/base\ngate_mode: random\nexperts:\n  - source_model: m/a\n  - source_model: m/a\n';
  assert.doesNotThrow(() => checkRecipe(parseRecipeText(noPrompts, F)));
  assert.match(errorOf(noPrompts.replace('random', 'uniform_random')).message, /Expert 0 has no positive prompts/);
  const mix = good + 'shared_experts:\n  - source_model: m/s\n    positive_prompts: [x]\n  - source_model: m/t\n';
  assert.match(errorOf(mix).message, /field shared_experts: Must specify prompts for all shared experts or none, not a mix/);
});

test('suggestions only for plausible typos', () => {
  assert.equal(suggest('experts_per_tokens', ['experts_per_token', 'experts']), 'experts_per_token');
  assert.equal(suggest('zzzzzz', ['experts', 'dtype']), null);
});
