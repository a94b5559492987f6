import { ModelError } from '../errors';

/**
 * A model reference as mergekit writes it: `org/name`, `org/name@revision`, a local path, or the mapping
 * `{model: {path, revision}, lora, override_architecture}`. Parsing is pure; resolution lives in resolve.ts.
 */
export interface ModelReference {
  /** The reference as written, for messages. */
  raw: string;
  path: string;
  revision: string | null;
  overrideArchitecture: string | null;
}

export type ModelReferenceInput =
  | string
  | { model: string | { path: string; revision?: string | null }; lora?: unknown; override_architecture?: string | null };

function loraError(raw: string): ModelError {
  return new ModelError(
    'lora_unsupported',
    `model reference "${raw}" names a LoRA adapter; mergekit-moe never merges LoRAs into experts. Merge the adapter into its base model first (e.g. with mergekit or peft) and reference the merged model`,
    { field: 'model' },
  );
}

function splitRevision(s: string, raw: string): { path: string; revision: string | null } {
  const parts = s.split('@');
  if (parts.length > 2) throw new ModelError('bad_reference', `Invalid model path - multiple @: ${raw}`);
  const path = parts[0]!.trim();
  if (!path) throw new ModelError('bad_reference', `model reference "${raw}" has an empty path`);
  const revision = parts.length === 2 ? parts[1]!.trim() : null;
  if (revision === '') throw new ModelError('bad_reference', `model reference "${raw}" has an empty revision after @`);
  return { path, revision };
}

export function parseModelReference(input: ModelReferenceInput): ModelReference {
  if (typeof input === 'string') {
    const raw = input;
    const plus = raw.split('+');
    if (plus.length > 2) throw new ModelError('bad_reference', `Can't parse model reference "${raw}": more than one +`);
    if (plus.length === 2) throw loraError(raw);
    return { raw, ...splitRevision(raw, raw), overrideArchitecture: null };
  }
  if (input === null || typeof input !== 'object' || !('model' in input)) {
    throw new ModelError('bad_reference', `model reference must be a string or a mapping with "model", got ${JSON.stringify(input)}`);
  }
  const raw = JSON.stringify(input);
  if (input.lora !== undefined && input.lora !== null) throw loraError(raw);
  const override = input.override_architecture ?? null;
  if (override !== null && typeof override !== 'string') throw new ModelError('bad_reference', `override_architecture must be a string in ${raw}`);
  const m = input.model;
  if (typeof m === 'string') {
    const r = parseModelReference(m);
    return { ...r, raw, overrideArchitecture: override };
  }
  if (!m || typeof m !== 'object' || typeof m.path !== 'string' || !m.path.trim()) {
    throw new ModelError('bad_reference', `model.path must be a non-empty string in ${raw}`);
  }
  if (m.revision !== undefined && m.revision !== null && (typeof m.revision !== 'string' || !m.revision)) {
    throw new ModelError('bad_reference', `model.revision must be a non-empty string in ${raw}`);
  }
  const inner = splitRevision(m.path, raw);
  if (inner.revision && m.revision) throw new ModelError('bad_reference', `model reference ${raw} gives a revision twice (in path and revision)`);
  return { raw, path: inner.path, revision: m.revision ?? inner.revision, overrideArchitecture: override };
}

/** `org/name@rev` for messages and keys. */
export function formatReference(ref: Pick<ModelReference, 'path' | 'revision'>): string {
  return ref.revision ? `${ref.path}@${ref.revision}` : ref.path;
}

const REPO_ID = /^[A-Za-z0-9][\w.-]*(\/[\w.-]+)?$/;

/** Whether a path could name a hub repo (`name` or `org/name`, no `..`, no leading slash). */
export function looksLikeRepoId(path: string): boolean {
  return REPO_ID.test(path) && !path.includes('..');
}
