import { existsSync, readdirSync, statSync } from 'node:fs';
import { isPlainFileName } from '../util';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ModelError } from '../errors';

/** What a merge reads from a model folder, and nothing else (no code, no READMEs, no other formats). */
export const CONFIG_FILE = 'config.json';
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model', 'added_tokens.json', 'vocab.json', 'merges.txt'] as const;
/**
 * Non-weight files a model folder carries besides the tokenizer, copied to the output as save_pretrained would
 * keep them: the chat template (transformers 5 keeps it in its own file) and the generation settings.
 */
export const CHAT_TEMPLATE_FILES = ['chat_template.jinja', 'chat_template.json'] as const;
export const GENERATION_CONFIG = 'generation_config.json';
export const COMPANION_FILES = [...CHAT_TEMPLATE_FILES, GENERATION_CONFIG] as const;
export const SAFETENSORS_INDEX = 'model.safetensors.index.json';
export const SAFETENSORS_SINGLE = 'model.safetensors';
export const BIN_INDEX = 'pytorch_model.bin.index.json';
export const BIN_SINGLE = 'pytorch_model.bin';

export type WeightFormat = 'safetensors' | 'bin';

export interface WeightLayout {
  format: WeightFormat;
  /** The index file name, when sharded. */
  index: string | null;
  /** Weight file names, in index order (deduplicated). */
  files: string[];
}

/** Shard names from an index's weight_map; refuses names that would leave the folder. */
export function shardsFromIndex(json: string, file: string): string[] {
  let idx: { weight_map?: Record<string, unknown> };
  try {
    idx = JSON.parse(json);
  } catch (e) {
    throw new ModelError('bad_index', `not valid JSON (${(e as Error).message})`, { file });
  }
  if (!idx || typeof idx.weight_map !== 'object' || idx.weight_map === null) {
    throw new ModelError('bad_index', 'expected an object "weight_map" mapping tensor names to shard files', { file, field: 'weight_map' });
  }
  const shards = [...new Set(Object.values(idx.weight_map))];
  for (const s of shards) {
    if (!isPlainFileName(s)) {
      throw new ModelError('bad_index', `shard name ${JSON.stringify(s)} must be a plain file name in the model folder`, { file, field: 'weight_map' });
    }
  }
  return shards as string[];
}

/**
 * Which weights a repo's top-level file list offers, in mergekit's order of preference: safetensors (index, then
 * single file), then .bin (index, then single file). `readIndex` gives an index's text (from disk or the hub).
 * Returns null when there are none.
 */
export async function chooseWeights(names: readonly string[], readIndex: (name: string) => Promise<string>): Promise<WeightLayout | null> {
  const has = new Set(names);
  if (has.has(SAFETENSORS_INDEX)) return { format: 'safetensors', index: SAFETENSORS_INDEX, files: shardsFromIndex(await readIndex(SAFETENSORS_INDEX), SAFETENSORS_INDEX) };
  if (has.has(SAFETENSORS_SINGLE)) return { format: 'safetensors', index: null, files: [SAFETENSORS_SINGLE] };
  const loose = names.filter((n) => n.endsWith('.safetensors') && !n.includes('/')).sort();
  if (loose.length) return { format: 'safetensors', index: null, files: loose };
  if (has.has(BIN_INDEX)) return { format: 'bin', index: BIN_INDEX, files: shardsFromIndex(await readIndex(BIN_INDEX), BIN_INDEX) };
  if (has.has(BIN_SINGLE)) return { format: 'bin', index: null, files: [BIN_SINGLE] };
  return null;
}

function isFile(p: string): boolean {
  try {
    return statSync(p).isFile(); // follows symlinks: a dangling snapshot link counts as missing
  } catch {
    return false;
  }
}

/** The weight layout of a folder on disk (shards come from the index). */
export async function weightsOnDisk(dir: string): Promise<WeightLayout | null> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return null;
  }
  const candidates = names.filter((n) => isFile(join(dir, n)));
  return chooseWeights(candidates, (n) => readFile(join(dir, n), 'utf8'));
}

const NO_WEIGHTS = 'weights (model.safetensors, or model.safetensors.index.json and its shards, or pytorch_model.bin)';

/** Files a complete model folder lacks: config.json and the weight files (named by the index, or the single file). */
export async function missingModelFiles(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return [CONFIG_FILE, NO_WEIGHTS];
  const missing: string[] = [];
  if (!isFile(join(dir, CONFIG_FILE))) missing.push(CONFIG_FILE);
  const layout = await weightsOnDisk(dir);
  if (layout) {
    for (const f of layout.files) if (!isFile(join(dir, f))) missing.push(f);
    return missing;
  }
  // Weight names that exist only as dangling links (a cache whose blob was removed) are named as missing.
  const dangling = readdirSync(dir).filter((n) => /\.(safetensors|bin)$|\.index\.json$/.test(n) && !isFile(join(dir, n)));
  missing.push(...(dangling.length ? dangling : [NO_WEIGHTS]));
  return missing;
}

/**
 * Every file the merge reads from a complete folder, as names relative to it: config, tokenizer files present,
 * index, weights. The companion files are left out, so an edited chat template keeps cached prompt states; the
 * write stage hashes them itself.
 */
export async function modelFiles(dir: string, ref = dir): Promise<string[]> {
  const layout = await weightsOnDisk(dir);
  if (!layout) throw new ModelError('no_weights', `Unable to find model files at ${dir} (no model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json) for ${ref}`, { file: dir });
  const names = [CONFIG_FILE, ...TOKENIZER_FILES.filter((n) => isFile(join(dir, n))), ...(layout.index ? [layout.index] : []), ...layout.files];
  for (const n of names) {
    if (!isFile(join(dir, n))) throw new ModelError('missing_file', `${n} is missing from the model folder of ${ref}`, { file: join(dir, n) });
  }
  return names;
}
