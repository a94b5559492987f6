/**
 * Tiny merged models whose router logits transformers recorded (test/fixtures/router-logits): the recipes, built
 * the same way by the recorder (record.ts) and by the test, so the test can check it runs the model recorded.
 */
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readRecipe } from '../../libs/recipe/parse';
import { runFetch } from '../../libs/stages/fetch';
import { runEmbedPrompts } from '../../libs/stages/embed-prompts';
import { gatesForAssembly, runBuildGates } from '../../libs/stages/build-gates';
import { runAssemble } from '../../libs/stages/assemble';
import { runWrite } from '../../libs/stages/write';
import { recipeYaml, tinyFamilyModel } from './arch-models';
import { FIXTURES } from './tmp';

export interface RouterCase {
  name: string;
  /** Writes the recipe (and any generated models) into dir; returns the recipe file. */
  recipe(dir: string): Promise<string>;
  layout?: 'classic' | 'fused';
  /** Texts routed: recipe prompts and others, of several lengths. */
  texts: string[];
}

const HELD_OUT = ['def add(a, b): return a + b', 'The sun rose over the quiet harbour and the boats went out one by one.', 'x'];

export const ROUTER_CASES: RouterCase[] = [
  {
    // The parity recipe (negative prompt, residual_scale) written in bfloat16: weights rounded as written.
    name: 'mixtral-bf16',
    async recipe(dir) {
      const file = join(dir, 'mixtral-bf16.yml');
      writeFileSync(file, readFileSync(join(FIXTURES, 'parity', 'mixtral-hidden.yml'), 'utf8').replaceAll('../tiny-llama', join(FIXTURES, 'tiny-llama')) + 'dtype: bfloat16\n');
      return file;
    },
    texts: ['How do I merge two models with mergekit?', 'Write a python function that adds numbers', ...HELD_OUT],
  },
  {
    // A Mistral base with a 4-token window: mergekit-moe writes sliding_window null, so the merged model attends to all.
    name: 'mixtral-fused-window',
    layout: 'fused',
    async recipe(dir) {
      const over = { layers: 3, slidingWindow: 4 };
      const base = await tinyFamilyModel(join(dir, 'w-base'), 'mistral', 11, over);
      const a = await tinyFamilyModel(join(dir, 'w-a'), 'mistral', 12, over);
      const b = await tinyFamilyModel(join(dir, 'w-b'), 'mistral', 13, over);
      const file = join(dir, 'mixtral-fused-window.yml');
      writeFileSync(file, recipeYaml({ base, gate: 'hidden_avg', topK: 1, architecture: 'mixtral', experts: [{ model: a, prompts: ['numbers and sums and products of numbers'] }, { model: b, prompts: ['a poem about the sea and the wind'] }, { model: base, prompts: ['the history of old castles'] }] }));
      return file;
    },
    texts: ['numbers and sums and products of numbers', ...HELD_OUT],
  },
  {
    // Qwen2-MoE: a gated shared expert (sigmoid of its own gate row) beside top-2 of 3.
    name: 'qwen2-moe',
    async recipe(dir) {
      const over = { layers: 3 };
      const base = await tinyFamilyModel(join(dir, 'q-base'), 'qwen2', 21, over);
      const a = await tinyFamilyModel(join(dir, 'q-a'), 'qwen2', 22, over);
      const b = await tinyFamilyModel(join(dir, 'q-b'), 'qwen2', 23, over);
      const file = join(dir, 'qwen2-moe.yml');
      writeFileSync(file, recipeYaml({ base, gate: 'hidden', topK: 2, dtype: 'bfloat16', experts: [{ model: a, prompts: ['sums of numbers'] }, { model: b, prompts: ['poems about the sea'] }, { model: base, prompts: ['castles and kings'] }], shared: [{ model: base, prompts: ['general text about anything'] }] }));
      return file;
    },
    texts: ['sums of numbers', 'poems about the sea', ...HELD_OUT],
  },
  {
    // Qwen3-MoE: per-head q/k norms in attention, no shared expert.
    name: 'qwen3-moe',
    async recipe(dir) {
      const over = { layers: 2 };
      const base = await tinyFamilyModel(join(dir, 'q3-base'), 'qwen3', 31, over);
      const a = await tinyFamilyModel(join(dir, 'q3-a'), 'qwen3', 32, over);
      const file = join(dir, 'qwen3-moe.yml');
      writeFileSync(file, recipeYaml({ base, gate: 'hidden', topK: 1, architecture: 'qwen3', experts: [{ model: a, prompts: ['sums of numbers'] }, { model: base, prompts: ['poems about the sea'] }] }));
      return file;
    },
    texts: ['sums of numbers', ...HELD_OUT],
  },
];

/** The stages up to the final plan (plan.json and the gates in `work/assemble-experts`). */
export async function buildCase(c: RouterCase, dir: string, cacheDir: string) {
  const recipe = await c.recipe(dir);
  const work = join(dir, `${c.name}-work`);
  const { merge } = await runFetch(await readRecipe(recipe), join(work, 'fetch'), { cacheDir, modelBaseDir: dir, layout: c.layout });
  await runEmbedPrompts(merge, join(work, 'embed-prompts'), { cacheDir });
  await runBuildGates(merge, join(work, 'embed-prompts'), join(work, 'build-gates'));
  const { gates, warnings } = await gatesForAssembly(merge, join(work, 'build-gates'));
  const plan = await runAssemble(merge, join(work, 'assemble-experts'), { maxShardBytes: 5e9, extraWarnings: warnings, gates });
  return { merge, work, plan, gates, recipe, planDir: join(work, 'assemble-experts') };
}

/** Writes the merged model and returns the sha256 of its weights (every .safetensors file, in name order). */
export async function writeCase(built: Awaited<ReturnType<typeof buildCase>>, out: string): Promise<string> {
  await runWrite(built.plan, { outPath: out, gates: built.gates, recipeText: readFileSync(built.recipe, 'utf8'), tokenizerDir: built.merge.ctx.base.dir, copyTokenizer: true, overwrite: false });
  const h = createHash('sha256');
  for (const f of readdirSync(out).filter((f) => f.endsWith('.safetensors')).sort()) h.update(f).update(readFileSync(join(out, f)));
  return h.digest('hex');
}

