import { isAbsolute, resolve } from 'node:path';
import { RecipeError } from '../errors';
import type { ModelReferenceInput } from './schema';

/** A model reference in its canonical form: what two references must share to mean the same model. */
export interface ModelRef {
  path: string;
  revision: string | null;
  /** The text the user wrote, for messages. */
  display: string;
}

/** Parses the reference's string syntax `path[@revision]` (spec 1): one `@` at most, no `+lora`. */
export function parseModelRef(input: ModelReferenceInput, field: string, file?: string): ModelRef {
  if (typeof input !== 'string') {
    if (input.lora) throw new RecipeError('lora_unsupported', 'LoRA references are not supported: mergekit-moe never merges LoRAs; merge the adapter into a model folder first', { file, field });
    return { path: input.model.path, revision: input.model.revision ?? null, display: input.model.path + (input.model.revision ? `@${input.model.revision}` : '') };
  }
  if (input.includes('+')) {
    throw new RecipeError('lora_unsupported', `"${input}": LoRA references (model+lora) are not supported: mergekit-moe never merges LoRAs; merge the adapter into a model folder first`, { file, field });
  }
  const at = input.split('@');
  if (at.length > 2) throw new RecipeError('bad_model_ref', `Invalid model path - multiple @: "${input}"`, { file, field });
  return { path: at[0]!, revision: at[1] ?? null, display: input };
}

export function refKey(r: ModelRef): string {
  return `${r.path}@${r.revision ?? ''}`;
}

/** Local-looking paths are resolved against `baseDir`; Hub ids (org/name) stay as they are. */
export function resolveLocal(r: ModelRef, baseDir: string): ModelRef {
  if (isAbsolute(r.path)) return r;
  const looksLocal = r.path.startsWith('.') || !/^[\w.-]+\/[\w.-]+$/.test(r.path);
  return looksLocal ? { ...r, path: resolve(baseDir, r.path) } : r;
}
