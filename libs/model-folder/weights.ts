import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ModelError } from '../errors';
import { SafetensorsWeights, type TensorIndex } from '../safetensors';
import { openBinCheckpoint } from '../pickle';

/** Weight discovery as the reference: safetensors (single or index) first, then PyTorch .bin. */
export async function openWeights(dir: string, ref: string = dir): Promise<TensorIndex> {
  if (existsSync(join(dir, 'model.safetensors')) || existsSync(join(dir, 'model.safetensors.index.json'))) {
    return SafetensorsWeights.openFolder(dir);
  }
  if (existsSync(join(dir, 'pytorch_model.bin')) || existsSync(join(dir, 'pytorch_model.bin.index.json'))) {
    return openBinCheckpoint(dir);
  }
  throw new ModelError('no_weights', `Unable to find model files for ${ref}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin`, { file: dir });
}
