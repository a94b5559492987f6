/**
 * The output folder as data: every file the write stage produces, the producer that makes it, and for the
 * files worth reusing (shards, the GGUF) the key of their content. writeOutput computes this list first, then
 * applies it into the temporary folder that the output-folder transaction swaps into place.
 */
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { createHash } from 'node:crypto';
import { ForgeError } from '../errors';
import { modelJson, readInputText } from '../input';
import { jsonText, parseJsonLossless, type LosslessJson } from '../json';
import { loadTokenizer } from '../tokenizer';
import { CHAT_TEMPLATE_FILES, GENERATION_CONFIG, TOKENIZER_FILES } from '../resolve';
import { modelCard } from '../model-card';
import { parseRecipeText } from '../recipe';
import { indexJson, type ShardPlan } from '../safetensors';
import { SafetensorsWeights } from '../safetensors';
import type { ChunkPool } from '../safetensors';
import { planShards, type OutputTensorSpec } from '../safetensors';
import { gateRow, type GateTensor } from '../gates';
import type { MergePlan, PlanTensor, SourcePart } from '../plan';
import type { RoutingReport } from '../report';
import { converterOrder, ggufLayout, ggufParts, hubSizeWarning, producerSource, shardSource, vocabKeys, writeModelGguf, type GgufLayout, type GgufOutType, type GgufPart, type SegmentSource } from '../gguf';

export type Producer = 'shard' | 'index' | 'config' | 'generation-config' | 'tokenizer' | 'recipe' | 'model-card' | 'routing' | 'gguf';

/**
 * What applying an entry does: `write` it into the temporary folder, `keep` the previous folder's file (its
 * content key is unchanged: hard-linked, or written after all when that file is gone or changed), or nothing
 * for a shard written `ahead` while the routers were computed.
 */
export type Action = 'write' | 'keep' | 'ahead';

export interface ManifestEntry {
  /** Plain names in the output folder. */
  files: string[];
  producer: Producer;
  /** Content key of a reusable file: the stamp records it, and an intact file under the same key is kept. */
  key?: string;
  bytes?: number;
  action: Action;
}

/** The output folder as data: nothing here is written until the write stage applies it. */
export interface OutputManifest {
  entries: ManifestEntry[];
  shards: ShardPlan[];
  /** Every keyed file's content key, as the stamp records it. */
  keys: Record<string, string>;
  gguf?: {
    type: GgufOutType;
    only: boolean;
    /** The whole model's layout. */
    layout: GgufLayout;
    /** Its files (one, or a split's), each with its content key. */
    parts: GgufPartPlan[];
  };
}

/** One file of the GGUF, as the write stage applies it. */
export interface GgufPartPlan {
  part: GgufPart;
  key: string;
  /**
   * When the previous folder's file of this name was made from the same shard files, config and tokenizer: the
   * plan tensors whose bytes it already holds at the same places (those of the shards kept), so a copy of it
   * needs only the other tensors written.
   */
  unchanged?: string[];
}

/** What the companion producers need. */
export interface CompanionInputs {
  plan: MergePlan;
  recipeText: string;
  tokenizerDir: string;
  copyTokenizer: boolean;
  writeRecipe?: boolean;
  routing?: { report: RoutingReport; html: string };
  /** Whether routing.html is expected (known before the report is). */
  withRouting: boolean;
}

/** A JSON object file read keeping its numbers' literals (an absent file is an empty object). */
async function readJsonObject(file: string): Promise<LosslessJson & { value: Record<string, unknown> }> {
  if (!existsSync(file)) return { value: {}, literals: {} };
  const doc = parseJsonLossless(await readInputText(file, modelJson(basename(file))));
  if (!doc.value || typeof doc.value !== 'object' || Array.isArray(doc.value)) throw new ForgeError('bad_json', 'must hold a JSON object', { file });
  return doc as LosslessJson & { value: Record<string, unknown> };
}

/**
 * Copies the base tokenizer and its chat template, with pad = BOS (else EOS) and left padding, as the reference
 * saves it. The two files we change keep every other key and number as the base wrote them.
 */
async function writeTokenizer(srcDir: string, outDir: string): Promise<void> {
  const tok = await loadTokenizer(srcDir);
  for (const f of [...TOKENIZER_FILES, ...CHAT_TEMPLATE_FILES]) {
    if (existsSync(join(srcDir, f))) await copyFile(join(srcDir, f), join(outDir, f));
  }
  const cfgPath = join(outDir, 'tokenizer_config.json');
  const cfg = await readJsonObject(cfgPath);
  cfg.value.pad_token = tok.padToken;
  cfg.value.padding_side = 'left';
  await writeFile(cfgPath, jsonText(cfg.value, { literals: cfg.literals }));
  const stmPath = join(outDir, 'special_tokens_map.json');
  const stm = await readJsonObject(stmPath);
  for (const k of ['bos_token', 'eos_token', 'unk_token'] as const) if (stm.value[k] === undefined && typeof cfg.value[k] === 'string') stm.value[k] = cfg.value[k];
  stm.value.pad_token = tok.padToken;
  await writeFile(stmPath, jsonText(stm.value, { literals: stm.literals }));
}

/** The small files beside the weights, each with its producer, in the order they are written. */
export function companionEntries(c: CompanionInputs): ManifestEntry[] {
  const out: ManifestEntry[] = [{ files: ['config.json'], producer: 'config', action: 'write' }];
  // The model's generation settings (an eos list, sampling defaults), as save_pretrained keeps them.
  if (existsSync(join(c.tokenizerDir, GENERATION_CONFIG))) out.push({ files: [GENERATION_CONFIG], producer: 'generation-config', action: 'write' });
  if (c.copyTokenizer) {
    const files: string[] = [...TOKENIZER_FILES, ...CHAT_TEMPLATE_FILES].filter((f) => existsSync(join(c.tokenizerDir, f)));
    for (const f of ['tokenizer_config.json', 'special_tokens_map.json']) if (!files.includes(f)) files.push(f);
    out.push({ files, producer: 'tokenizer', action: 'write' });
  }
  if (c.writeRecipe !== false) {
    out.push({ files: ['mergekit_moe_config.yml'], producer: 'recipe', action: 'write' });
    out.push({ files: ['README.md'], producer: 'model-card', action: 'write' });
    if (c.withRouting) out.push({ files: ['routing.html'], producer: 'routing', action: 'write' });
  }
  return out;
}

/** Writes a companion entry's files into `dir`. */
export async function writeCompanion(e: ManifestEntry, dir: string, c: CompanionInputs, shards: ShardPlan[]): Promise<void> {
  switch (e.producer) {
    case 'config':
      return writeFile(join(dir, 'config.json'), jsonText(c.plan.config, { literals: c.plan.configNumbers }));
    case 'generation-config':
      return copyFile(join(c.tokenizerDir, GENERATION_CONFIG), join(dir, GENERATION_CONFIG));
    case 'tokenizer':
      return writeTokenizer(c.tokenizerDir, dir);
    case 'recipe':
      return writeFile(join(dir, 'mergekit_moe_config.yml'), c.recipeText);
    case 'model-card': {
      // The reference writes no model card; a README with front matter makes the output findable on the Hub.
      const { recipe } = parseRecipeText(c.recipeText, 'mergekit_moe_config.yml');
      return writeFile(join(dir, 'README.md'), modelCard({ plan: c.plan, recipe, recipeText: c.recipeText, gateMode: recipe.gate_mode, routing: c.routing?.report }));
    }
    case 'routing':
      return writeFile(join(dir, 'routing.html'), c.routing!.html);
    case 'index':
      return writeFile(join(dir, 'model.safetensors.index.json'), indexJson(shards));
    default:
      throw new Error(`internal: ${e.producer} is not a companion`);
  }
}

export function indexEntry(shards: ShardPlan[]): ManifestEntry[] {
  return shards.length > 1 ? [{ files: ['model.safetensors.index.json'], producer: 'index', action: 'write' }] : [];
}

/** Bumped when the GGUF writer's output for the same inputs changes, so a stamped GGUF is not kept across it. */
const GGUF_WRITER = 'moe-forge-gguf-1';

/** The GGUF's layout (refused here, before any work, for what llama.cpp cannot take). */
export function ggufPlan(plan: MergePlan, shards: ShardPlan[], type: GgufOutType): GgufLayout {
  const byName = new Map(plan.tensors.map((t) => [t.name, t]));
  return ggufLayout(plan, converterOrder(shards.map((s) => s.tensors.map((t) => byName.get(t.name)!))), type);
}

/** The plan tensors whose bytes a GGUF file holds. */
const partTensors = (part: GgufPart) => new Set(part.layout.tensors.flatMap((t) => t.segments.map((s) => s.tensor.name)));

/** The shards a GGUF file's tensors come from (every shard for the one file of an unsplit GGUF). */
function partShards(part: GgufPart, shards: ShardPlan[]): ShardPlan[] {
  if (part.count === 1) return shards;
  const names = partTensors(part);
  return shards.filter((s) => s.tensors.some((t) => names.has(t.name)));
}

/** The tokenizer and chat-template files a GGUF's keys depend on, each with its sha256 (read once per build). */
export type TokenizerHashes = [string, string][];

export async function tokenizerHashes(tokenizerDir: string): Promise<TokenizerHashes> {
  const out: TokenizerHashes = [];
  for (const f of [...TOKENIZER_FILES, ...CHAT_TEMPLATE_FILES]) {
    const p = join(tokenizerDir, f);
    if (existsSync(p)) out.push([f, createHash('sha256').update(await readFile(p)).digest('hex')]);
  }
  return out;
}

/**
 * A GGUF file's key: what decides its bytes (the content keys of the shards its tensors come from, the config,
 * the tokenizer files, the type and the writer; for a split's file also its tensors and places).
 */
export function ggufKey(plan: MergePlan, shards: ShardPlan[], shardKeys: Record<string, string>, type: GgufOutType, tokenizer: TokenizerHashes, part?: GgufPart): string {
  const from = part ? partShards(part, shards) : shards;
  // An unsplit GGUF keeps the key it always had (its stamped files stay kept).
  const split = part && part.count > 1
    ? [part.file, part.count, part.layout.metadata.find((k) => k.key === 'split.tensors.count')?.value.value ?? null, part.layout.tensors.map((t) => [t.name, t.shape, t.type, t.permuteGroupRows ?? null, t.data ? createHash('sha256').update(t.data).digest('hex') : null, t.segments.map((s) => [s.tensor.name, s.begin, s.count])])]
    : [];
  const h = createHash('sha256').update(JSON.stringify([GGUF_WRITER, type, from.map((s) => [s.file, shardKeys[s.file]]), plan.config, ...split]));
  for (const [f, digest] of tokenizer) h.update(f).update(digest);
  return h.digest('hex');
}

/**
 * The plan tensors of `kept` shards in GGUF file `part`, when the previous folder's file of that name holds their
 * bytes at the places this one has: its key is the one the previous shards' keys give with today's shard files,
 * config, tokenizer and type (so the same header and places). Null when it is not so, or the previous file is not
 * to be trusted (found changed).
 */
export function ggufUnchanged(plan: MergePlan, shards: ShardPlan[], previous: Previous | null, suspect: string[], type: GgufOutType, tokenizer: TokenizerHashes, kept: string[], part: GgufPart): string[] | null {
  const was = previous?.shards?.[part.file];
  if (!was || suspect.includes(part.file) || kept.length === 0) return null;
  if (!partShards(part, shards).every((s) => previous!.shards![s.file] !== undefined)) return null;
  if (ggufKey(plan, shards, previous!.shards!, type, tokenizer, part) !== was) return null;
  const names = partTensors(part);
  const unchanged = shards.filter((s) => kept.includes(s.file)).flatMap((s) => s.tensors.map((t) => t.name)).filter((n) => names.has(n));
  return unchanged.length > 0 ? unchanged : null;
}

/** Bytes a GGUF of this layout takes, about (the free-space check). */
export function ggufBytes(layout: GgufLayout): number {
  const bytes = layout.tensors.reduce((a, t) => a + t.segments.reduce((b, s) => b + s.count, 0) * (t.type === 'F32' ? 4 : t.type === 'Q8_0' ? 34 / 32 : 2), 0);
  return Math.ceil(bytes) + (1 << 20);
}

/**
 * Which algorithm drew a tensor's noise: shards and stamps written with the default noise of an earlier
 * moe-forge (xoshiro128**, double Box-Muller) are not taken for ones written with today's draws.
 */
export const STREAM_NOISE_DRAWS = 'mt19937-boxmuller-f32';
function noiseDraws(p: SourcePart): string {
  return p.noise?.torch ? 'torch' : STREAM_NOISE_DRAWS;
}

/** What decides a shard's bytes: tensor specs, sources by content id, transforms and router rows. */
export function shardHash(plan: MergePlan, tensors: PlanTensor[], gates: GateTensor | null): string {
  const ids = new Map(plan.models.map((m) => [m.key, m.contentId ?? m.dir]));
  const h = createHash('sha256');
  for (const t of tensors) {
    h.update(JSON.stringify([t.name, t.dtype, t.shape]));
    for (const p of t.parts) {
      if (p.kind === 'source') h.update(JSON.stringify([ids.get(p.model), p.tensor, p.dtype, p.shape, p.noise ? { ...p.noise, draws: noiseDraws(p) } : null, p.scale ?? null]));
      else if (p.kind === 'zeros') h.update(JSON.stringify(['zeros', p.elements]));
      else for (const r of p.rows) h.update(gateRow(gates!, p.layer, r));
    }
  }
  return h.digest('hex');
}

/** `plan` with its models' content ids (by model key): an early plan made before fetch had hashed them. */
export function withContentIds(plan: MergePlan, ids: ReadonlyMap<string, string>): MergePlan {
  return { ...plan, models: plan.models.map((m) => (ids.has(m.key) ? { ...m, contentId: ids.get(m.key)! } : m)) };
}

/** The output's shards (the safetensors writer's split of the plan). */
export function shardsOf(plan: MergePlan): ShardPlan[] {
  return planShards(plan.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, group: t.group }) satisfies OutputTensorSpec), plan.maxShardBytes, plan.shardOrder ?? 'reference');
}

/** A shard whose bytes depend on the routers (the forward pass's result). */
export const holdsGates = (tensors: PlanTensor[]) => tensors.some((t) => t.parts.some((p) => p.kind === 'gates'));

/** What the previous folder's stamp says (null: no folder, or not ours) and which of its files are not to be trusted. */
export interface Previous {
  shards?: Record<string, string>;
}

/**
 * The shards worth writing while the routers are still computed: those without routers whose content the
 * previous folder does not already hold (or holds in a file found changed). A previous stamp without shard keys
 * (an older build) may still be the same merge: then nothing is written ahead.
 */
export function aheadShards(early: MergePlan, previous: Previous | null, suspect: string[]): { shard: ShardPlan; key: string }[] {
  if (previous && !previous.shards) return [];
  const byName = new Map(early.tensors.map((t) => [t.name, t]));
  return shardsOf(early)
    .map((shard) => ({ shard, tensors: shard.tensors.map((t) => byName.get(t.name)!) }))
    .filter(({ tensors }) => !holdsGates(tensors))
    .map(({ shard, tensors }) => ({ shard, key: shardHash(early, tensors, null) }))
    .filter(({ shard, key }) => previous?.shards?.[shard.file] !== key || suspect.includes(shard.file));
}

export interface ManifestInputs extends Omit<CompanionInputs, 'withRouting'> {
  gates: GateTensor;
  gguf?: GgufOutType;
  ggufOnly?: boolean;
  /** Split the GGUF into files of at most this many bytes, the routers in the first (ggufParts). */
  ggufSplitBytes?: number;
  /** The previous folder's stamp, and its files not to be kept as written. */
  previous: Previous | null;
  suspect: string[];
  /** Shards already in the temporary folder (written ahead), with the content key they were written under. */
  ahead?: ReadonlyMap<string, string>;
}

/**
 * The output folder as data: every file, its producer, the content key of the reusable ones and what applying
 * it does (write, keep the previous file, or nothing: written ahead). Reads inputs (the tokenizer files for the
 * GGUF's key), writes nothing.
 */
export async function outputManifest(m: ManifestInputs): Promise<OutputManifest> {
  const { plan, gates } = m;
  const only = m.gguf !== undefined && m.ggufOnly === true;
  const shards = shardsOf(plan);
  const byName = new Map(plan.tensors.map((t) => [t.name, t]));
  const keys: Record<string, string> = {};
  const shardKeys: Record<string, string> = {};
  for (const s of shards) shardKeys[s.file] = shardHash(plan, s.tensors.map((t) => byName.get(t.name)!), gates);
  const action = (file: string, key: string): Action =>
    m.ahead?.get(file) === key ? 'ahead' : m.previous?.shards?.[file] === key && !m.suspect.includes(file) ? 'keep' : 'write';
  const entries: ManifestEntry[] = [];
  if (!only) {
    for (const s of shards) {
      keys[s.file] = shardKeys[s.file]!;
      entries.push({ files: [s.file], producer: 'shard', key: shardKeys[s.file], bytes: s.bytes, action: action(s.file, shardKeys[s.file]!) });
    }
    entries.push(...indexEntry(shards));
  }
  entries.push(...companionEntries({ ...m, withRouting: m.routing !== undefined }));
  let gguf: OutputManifest['gguf'];
  if (m.gguf) {
    const layout = ggufPlan(plan, shards, m.gguf);
    const parts: GgufPartPlan[] = [];
    const kept = shards.filter((s) => action(s.file, shardKeys[s.file]!) === 'keep').map((s) => s.file);
    const tokenizer = await tokenizerHashes(m.tokenizerDir);
    for (const part of ggufParts(layout, m.gguf, m.ggufSplitBytes)) {
      const key = ggufKey(plan, shards, shardKeys, m.gguf, tokenizer, part);
      keys[part.file] = key;
      // Never written ahead: a file with routers is keyed by the router shards, and the others are written beside them.
      entries.push({ files: [part.file], producer: 'gguf', key, bytes: ggufBytes(part.layout), action: action(part.file, key) === 'keep' ? 'keep' : 'write' });
      const unchanged = only ? null : ggufUnchanged(plan, shards, m.previous, m.suspect, m.gguf, tokenizer, kept, part);
      parts.push({ part, key, ...(unchanged ? { unchanged } : {}) });
    }
    // Said with the layout's other warnings: a file the Hub would refuse.
    const big = parts.map((p) => hubSizeWarning(p.part, ggufBytes(p.part.layout))).filter((w): w is string => w !== null);
    gguf = { type: m.gguf, only, layout: big.length > 0 ? { ...layout, warnings: [...layout.warnings, ...big] } : layout, parts };
  }
  return { entries, shards, keys, gguf };
}

/** The GGUF's tensors from the shards in `dir` (what the converter reads), or with no shards from the producer. */
export async function ggufSource(dir: string, shards: ShardPlan[], only: boolean, produce: () => (t: PlanTensor) => AsyncIterable<Buffer>, pool: ChunkPool): Promise<SegmentSource> {
  return only ? producerSource(produce()) : shardSource(await SafetensorsWeights.openFiles(dir, shards.map((s) => join(dir, s.file))), pool);
}

/** Writes a GGUF file in one pass from `source` (the --gguf-only path). */
export async function writeGgufFile(dir: string, part: GgufPart, type: GgufOutType, source: SegmentSource, pool: ChunkPool, log?: (l: string) => void): Promise<void> {
  log?.(`writing ${part.file} (${part.layout.tensors.length} tensors, ${type})`);
  // The tokenizer keys (first file) from the folder being written (its config.json and tokenizer files, written
  // before the GGUF), as the converter reads them: the written tokenizer_config.json carries our pad token.
  await writeModelGguf(join(dir, part.file), part.layout, part.index === 0 ? await vocabKeys(dir) : [], source, { pool });
}
