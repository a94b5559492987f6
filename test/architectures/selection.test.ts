/** Choosing the output architecture as the reference does, and every refusal of it, with the messages users see. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergeRecipe } from '../../libs/pipeline';
import { ARCHITECTURES, ARCHITECTURE_NAMES, selectArchitecture } from '../../libs/architectures/registry';
import type { ArchContext, ModelSource } from '../../libs/architectures/types';
import type { ModelConfig } from '../../libs/model-folder/config';
import { recipeYaml, tinyFamilyModel, type ExpertYaml, type Family } from '../helpers/arch-models';
import { tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-select-');
const cache = new Map<string, Promise<string>>();
const m = (family: Family, seed: number) => {
  const k = `${family}-${seed}`;
  if (!cache.has(k)) cache.set(k, tinyFamilyModel(join(dir, k), family, seed));
  return cache.get(k)!;
};

const ALL_FOUR = /\* Mixtral\n\s+\* DeepSeek MoE\n\s+\* Qwen MoE\n\s+\* Qwen3 MoE/;

let n = 0;
async function recipe(family: Family, opts: { gate?: string; shared?: ExpertYaml[]; architecture?: string; expertFamily?: Family } = {}) {
  const f = join(dir, `r${n++}.yml`);
  const experts = [
    { model: await m(family, 2), prompts: ['math and numbers'] },
    { model: await m(opts.expertFamily ?? family, 3), prompts: ['code in python'] },
  ];
  const shared = opts.shared ? await Promise.all(opts.shared.map(async (s) => ({ ...s, model: await m(family, Number(s.model)) }))) : undefined;
  writeFileSync(f, recipeYaml({ base: await m(family, 1), experts, shared, gate: opts.gate ?? 'cheap_embed', architecture: opts.architecture }));
  return f;
}

async function fails(file: string, ...res: RegExp[]) {
  const out = join(dir, `out${n++}`);
  await assert.rejects(mergeRecipe({ recipeFile: file, outPath: out, modelBaseDir: dir }), (e: Error) => {
    for (const re of res) assert.match(e.message, re);
    return true;
  });
  assert.ok(!existsSync(out), 'no output folder');
}

async function selects(file: string): Promise<{ modelType: string; warnings: string[] }> {
  const out = join(dir, `out${n++}`);
  const warnings: string[] = [];
  await mergeRecipe({ recipeFile: file, outPath: out, modelBaseDir: dir, warn: (w) => warnings.push(w) });
  return { modelType: JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).model_type, warnings };
}

test('the candidates are the reference four, in its order', () => {
  assert.deepEqual(ARCHITECTURE_NAMES, ['Mixtral', 'DeepSeek MoE', 'Qwen MoE', 'Qwen3 MoE']);
  assert.deepEqual(ARCHITECTURES.map((a) => a.name), ARCHITECTURE_NAMES);
});

test('an architecture name that matches no prefix lists all four', async () => {
  await fails(await recipe('llama', { architecture: 'qwen2_moe' }), /No output architecture found that matches the given architecture: qwen2_moe/, ALL_FOUR);
});

test('nothing compatible: every candidate says why', async () => {
  // Qwen2 inputs without a shared expert: the frequent confusion of #395.
  await fails(
    await recipe('qwen2'),
    /No output architecture found that is compatible with the given models/,
    ALL_FOUR,
    /Mixtral: model_type qwen2 is not accepted \(needs llama or mistral\)/,
    /DeepSeek MoE: model_type qwen2 is not accepted/,
    /Qwen MoE: Qwen MoE needs exactly one shared expert \(got 0\)/,
    /Qwen3 MoE: model_type qwen2 is not accepted \(needs qwen3\)/,
  );
  // More than one shared expert fits nothing.
  await fails(
    await recipe('llama', { shared: [{ model: '4' }, { model: '5' }] }),
    /Mixtral: Mixtral has no shared experts/,
    /DeepSeek MoE: DeepSeek MoE supports at most one shared expert \(got 2\)/,
    /Qwen MoE: Qwen MoE needs exactly one shared expert \(got 2\)/,
    /Qwen3 MoE: Qwen3 MoE does not support shared experts \(got 2\)/,
  );
  // Qwen3 inputs take no shared expert.
  await fails(await recipe('qwen3', { shared: [{ model: '4', prompts: ['all'] }] }), /Qwen3 MoE: Qwen3 MoE does not support shared experts \(got 1\)/, /Qwen MoE: model_type qwen3 is not accepted/);
});

test('a named architecture that refuses the inputs says why', async () => {
  await fails(await recipe('llama', { architecture: 'deepseek', shared: [{ model: '4', prompts: ['everything'] }] }), /compatible/, /DeepSeek MoE: DeepSeek MoE does not support gating shared experts/);
  await fails(await recipe('llama', { architecture: 'deepseek', shared: [{ model: '4', negative: ['nothing'] }] }), /DeepSeek MoE does not support gating shared experts/);
  await fails(await recipe('llama', { architecture: 'mixtral', shared: [{ model: '4' }] }), /Mixtral: Mixtral has no shared experts/);
  // Qwen MoE exempts only "random" from shared-expert prompts; uniform_random is not.
  await fails(await recipe('llama', { architecture: 'qwen', gate: 'uniform_random', shared: [{ model: '4' }] }), /Qwen MoE: Qwen MoE needs positive prompts on its shared expert unless gate_mode is random \(gate_mode is uniform_random\)/, /Qwen3 MoE: Qwen3 MoE does not support shared experts/);
});

test('mixed model types are refused naming the models', async () => {
  await fails(await recipe('llama', { expertFamily: 'qwen2' }), /experts\[1\] .*qwen2-3 has model_type qwen2 but the base model .*llama-1 has llama/);
  // The architectures' own check (for callers that skip the pipeline's agreement check).
  const src = (ref: string, modelType: string): ModelSource => ({ key: ref, ref, dir: ref, config: { modelType, hiddenSize: 8 } as ModelConfig, weights: { has: () => false, get: () => { throw new Error('none'); } } });
  const ctx: ArchContext = {
    recipe: { base_model: 'a', experts: [], gate_mode: 'random', experts_per_token: 1 },
    gateMode: 'random',
    base: src('org/llama-base', 'llama'),
    experts: [{ spec: { source_model: 'b' }, model: src('org/qwen-expert', 'qwen2'), index: 0, shared: false }],
    shared: [{ spec: { source_model: 'c' }, model: src('org/llama-shared', 'llama'), index: 0, shared: true }],
    outDtype: null,
    layout: 'classic',
    seed: 0,
  };
  assert.throws(() => selectArchitecture(ctx), (e: Error) => {
    assert.match(e.message, /DeepSeek MoE: models have different model_type: llama \(org\/llama-base, org\/llama-shared\) vs qwen2 \(org\/qwen-expert\)/);
    assert.match(e.message, /Qwen MoE: Qwen MoE needs positive prompts|Qwen MoE: models have different model_type/);
    return true;
  });
});

test('defaults: Llama with a prompt-less shared expert is DeepSeek, with prompts Qwen MoE; qwen picks Qwen3 for Qwen3 inputs', async () => {
  assert.deepEqual(await selects(await recipe('llama', { shared: [{ model: '4', residual: 0.1 }] })), { modelType: 'deepseek', warnings: [] });
  const q = await selects(await recipe('llama', { shared: [{ model: '4', prompts: ['general text'] }] }));
  assert.equal(q.modelType, 'qwen2_moe');
  assert.deepEqual(q.warnings, []);
  assert.equal((await selects(await recipe('qwen3', { architecture: 'qwen' }))).modelType, 'qwen3_moe');
  assert.equal((await selects(await recipe('qwen2', { shared: [{ model: '4', prompts: ['general text'] }] }))).modelType, 'qwen2_moe');
  assert.equal((await selects(await recipe('mistral'))).modelType, 'mixtral');
});

test('several compatible architectures: the first wins, with a warning', async () => {
  // In random mode a prompt-less shared expert suits both DeepSeek and Qwen MoE.
  const r = await selects(await recipe('llama', { gate: 'random', shared: [{ model: '4' }] }));
  assert.equal(r.modelType, 'deepseek');
  assert.ok(r.warnings.includes('Multiple output architectures found (DeepSeek MoE, Qwen MoE). Defaulting to DeepSeek MoE.'), r.warnings.join('\n'));
  // Naming one of them selects it without a warning.
  const q = await selects(await recipe('llama', { gate: 'random', architecture: 'qwen', shared: [{ model: '4' }] }));
  assert.equal(q.modelType, 'qwen2_moe');
  assert.ok(!q.warnings.some((w) => /Multiple/.test(w)));
});
