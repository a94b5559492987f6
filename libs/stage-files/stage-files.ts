import { readFile, writeFile } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { z } from 'zod';
import { ForgeError, type ErrorPlace } from '../errors';
import { GATE_MODE_NAMES, PROMPT_STATE_KINDS } from '../gates';
import { OUTPUT_DTYPES, WEIGHT_DTYPES } from '../safetensors';

/**
 * Stage files are read back from Nx caches (local or remote, which someone else may write): each is read
 * through a typed reader that checks its version and shape and refuses it in one line naming the file.
 */
export const REFUSED = 'a cache entry may have been altered; run the stage again with --skip-nx-cache';

/** A stage file that is not what its stage writes. */
export function refuseStageFile(file: string, message: string, place: Omit<ErrorPlace, 'file'> = {}): ForgeError {
  return new ForgeError('bad_stage_output', `${message}; ${basename(file)} is refused (${REFUSED})`, { file, ...place });
}

const path = (p: PropertyKey[]) => p.map((k, i) => (typeof k === 'number' ? `[${k}]` : `${i ? '.' : ''}${String(k)}`)).join('');

/** A stage file that is not there: its stage has not run (not a refusal). */
export function missingStageFile(file: string, stage: string, why = 'ENOENT'): ForgeError {
  return new ForgeError('missing_stage_output', `cannot read the ${stage} stage's output (${why}); run the ${stage} stage first`, { file });
}

/**
 * The texts of the stage files this process wrote last (by path). A file read back byte for byte the same is what
 * this process made from its typed value, so readStageJson skips its schema there (the command's pipeline: a 7B
 * plan.json's took ~20 ms of an edit's end); any other text, a file changed since or another process's, is checked.
 */
const ownTexts = new Map<string, string>();
const OWN_TEXTS = 32;

/** readStageJson's reads of a file this process wrote, byte for byte (tests read this). */
export const stageFileStats = { own: 0 };

/** Writes a stage's JSON file (its text as given) and remembers the text (readStageJson). */
export async function writeStageFile(file: string, text: string): Promise<void> {
  const key = resolve(file);
  ownTexts.delete(key);
  await writeFile(file, text);
  ownTexts.set(key, text);
  if (ownTexts.size > OWN_TEXTS) ownTexts.delete(ownTexts.keys().next().value!);
}

/**
 * A stage's JSON file checked against its schema and version. The object returned is the file's own (the schema
 * only checks it), so hashes over it stay what they were.
 */
export async function readStageJson<T>(file: string, schema: z.ZodType, version: number, stage: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw missingStageFile(file, stage, (e as NodeJS.ErrnoException).code ?? (e as Error).message);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw refuseStageFile(file, `not valid JSON (${(e as Error).message})`);
  }
  const v = raw && typeof raw === 'object' ? (raw as { version?: unknown }).version : undefined;
  if (v !== version) throw refuseStageFile(file, `version ${JSON.stringify(v)}, expected ${version} (written by another moe-forge, or altered)`);
  if (ownTexts.get(resolve(file)) === text) {
    stageFileStats.own++;
    return raw as T;
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw refuseStageFile(file, `${path(issue.path) || 'the file'}: ${issue.message}`);
  }
  return raw as T;
}

const int = z.number().int().nonnegative();
const shape = z.array(int);

const noise = z.object({ scale: z.number(), stream: z.string(), seed: z.number(), torch: z.object({ offset: int, cachedNormal: z.number().nullable() }).optional() });
const sourcePart = z.object({ kind: z.literal('source'), model: z.string(), tensor: z.string(), file: z.string(), offset: int, byteLength: int, dtype: z.enum(WEIGHT_DTYPES), shape, noise: noise.optional(), scale: z.number().optional() });
const gatePart = z.object({ kind: z.literal('gates'), layer: int, rows: z.array(int) });
const zerosPart = z.object({ kind: z.literal('zeros'), elements: int });

export const PLAN_SCHEMA = z.object({
  version: z.literal(1),
  architecture: z.string(),
  layout: z.enum(['classic', 'fused']),
  outDtype: z.enum(OUTPUT_DTYPES).nullable(),
  config: z.record(z.string(), z.unknown()),
  configNumbers: z.record(z.string(), z.string()).optional(),
  models: z.array(z.object({ key: z.string(), ref: z.string(), dir: z.string().optional(), contentId: z.string().optional() })).min(1),
  tensors: z.array(z.object({ name: z.string(), dtype: z.enum(WEIGHT_DTYPES), shape, parts: z.array(z.discriminatedUnion('kind', [sourcePart, gatePart, zerosPart])), group: z.string() })),
  maxShardBytes: z.number().nonnegative(),
  shardOrder: z.enum(['grouped', 'reference']),
  warnings: z.array(z.string()),
});

export const MODELS_SCHEMA = z.object({
  version: z.literal(2),
  models: z
    .array(z.object({ key: z.string(), ref: z.string(), dir: z.string().min(1), source: z.enum(['local', 'hub']), revision: z.string().nullable(), contentId: z.string().optional(), bytes: int.optional() }))
    .min(1),
});

export const GATES_INFO_SCHEMA = z.object({
  version: z.literal(1),
  layers: int,
  experts: int,
  hidden: int,
  gateMode: z.enum(GATE_MODE_NAMES),
  conditionNumbers: z.array(z.union([z.number(), z.literal('Infinity')])),
  warnings: z.array(z.string()),
  deferred: z.boolean().optional(),
});

export const PROMPT_STATES_SCHEMA = z.object({
  version: z.literal(1),
  mode: z.enum(PROMPT_STATE_KINDS),
  device: z.string().nullable(),
  layers: int,
  hidden: int,
  // count divides the sums (hidden_avg): it is the number of token ids, nothing else.
  prompts: z.array(z.object({ text: z.string(), ids: z.array(int), count: int }).refine((p) => p.count === p.ids.length && p.count > 0, { message: 'count must be the number of token ids', path: ['count'] })),
  computed: int,
  fromCache: int,
});

const nullableNumber = z.number().nullable();
const ints = z.array(int);

/** routing.json as the write stage uses it (the model card's Routing section): the fields it reads, typed. */
const AGREEMENT = z.object({ tokens: int, top1: z.number(), topK: z.number(), margin: z.number(), texts: int, textTop1: nullableNumber, textTopK: nullableNumber }).nullable();
const LOAD = z.object({ load: z.array(z.number()), maxVio: z.number(), entropy: z.number(), starving: ints, dominating: ints });
const MEASURED_SCHEMA = z.object({
  headline: z.enum(['heldout', 'train']),
  chance: z.object({ top1: z.number(), topK: z.number() }),
  overall: z.object({ heldout: AGREEMENT, train: AGREEMENT, load: LOAD }),
  perLayer: z.array(z.object({ layer: int, heldout: AGREEMENT, train: AGREEMENT, load: LOAD, pairs: z.array(z.object({ experts: z.tuple([int, int]), cosine: z.number(), kind: z.enum(['identical', 'opposite']) })) })),
  prompts: z.array(z.object({ prompt: int, tokens: int, layers: z.array(z.object({ winner: int, winnerShare: z.number(), ownShare: nullableNumber, margin: nullableNumber })) })),
  pairs: z.array(z.object({ experts: z.tuple([int, int]), kind: z.enum(['identical', 'opposite']), layers: ints, cosine: z.number() })),
});

export const ROUTING_SCHEMA = z
  .object({
    version: z.literal(2),
    name: z.string(),
    gateMode: z.enum(GATE_MODE_NAMES),
    topK: int,
    state: z.string(),
    layers: int,
    hidden: int,
    experts: z.array(z.object({ index: int, label: z.string(), model: z.string(), shared: z.boolean() })),
    routed: int,
    prompts: z.array(z.object({ text: z.string(), set: z.enum(['train', 'heldout']), role: z.enum(['positive', 'negative']), expert: int })),
    summary: z.object({
      accuracy: nullableNumber,
      heldOutAccuracy: nullableNumber,
      byRange: z.array(z.object({ from: int, to: int, accuracy: nullableNumber, heldOutAccuracy: nullableNumber })),
      starving: z.array(z.object({ expert: int, layers: ints, reasons: z.array(z.string()) })),
      pairs: z.array(z.object({ experts: z.tuple([int, int]), layers: ints, minCosine: z.number() })),
      degenerateLayers: ints,
      notes: z.array(z.string()),
    }),
    perLayer: z.array(z.object({ layer: int })),
    warnings: z.array(z.string()),
    measured: MEASURED_SCHEMA,
    advice: z.array(z.string()),
  })
  .refine((r) => [...r.summary.starving.map((s) => s.expert), ...r.summary.pairs.flatMap((p) => p.experts)].every((e) => e < r.experts.length), { message: 'names an expert it does not list', path: ['summary'] });
