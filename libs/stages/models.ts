import { existsSync, statSync } from 'node:fs';
import { ModelError } from '../errors';
import { readModelConfig } from '../model-folder';
import { openWeights } from '../model-folder';
import type { ModelSource } from '../architectures';

export async function openModel(key: string, ref: string, dir: string): Promise<ModelSource> {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new ModelError('missing_model', `model folder not found for ${ref}`, { file: dir });
  }
  const config = await readModelConfig(dir);
  const weights = await openWeights(dir, ref);
  return { key, ref, dir, config, weights };
}

/** Base and experts must agree on the sizes a merge stacks together; name the ones that differ. */
export function checkModelsAgree(base: ModelSource, others: { model: ModelSource; role: string }[]): void {
  const fields = [
    ['hidden_size', (m: ModelSource) => m.config.hiddenSize],
    ['intermediate_size', (m: ModelSource) => m.config.intermediateSize],
    ['num_hidden_layers', (m: ModelSource) => m.config.numLayers],
    ['model_type', (m: ModelSource) => m.config.modelType],
  ] as const;
  const problems: string[] = [];
  for (const [field, get] of fields) {
    const want = get(base);
    const differ = others.filter((o) => get(o.model) !== want);
    for (const o of differ) problems.push(`${o.role} ${o.model.ref} has ${field} ${get(o.model)} but the base model ${base.ref} has ${want}`);
  }
  if (problems.length > 0) {
    throw new ModelError('models_disagree', `the models cannot be merged:\n  ${[...new Set(problems)].join('\n  ')}`, { file: others.find((o) => problems.some((p) => p.includes(o.model.ref)))?.model.config.file ?? base.config.file, field: problems[0]!.split(' has ')[1]!.split(' ')[0] });
  }
}
