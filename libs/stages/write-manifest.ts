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
import type { MergePlan, PlanTensor } from '../plan';
import type { RoutingReport } from '../report';
import { converterOrder, ggufFileName, ggufLayout, producerSource, shardSource, vocabKeys, writeModelGguf, type GgufLayout, type GgufOutType } from '../gguf';

export interface ManifestEntry {
  /** Plain names in the output folder. */
  files: string[];
  producer: 'shard' | 'index' | 'config' | 'generation-config' | 'tokenizer' | 'recipe' | 'model-card' | 'routing' | 'gguf';
  /** Content key of a reusable file: the stamp records it, and an intact file under the same key is kept. */
  key?: string;
  bytes?: number;
  /** Writes the files into `dir` (the temporary folder, which holds the shards by then). */
  write?: (dir: string) => Promise<void>;
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
  const out: ManifestEntry[] = [{ files: ['config.json'], producer: 'config', write: (dir) => writeFile(join(dir, 'config.json'), jsonText(c.plan.config, { literals: c.plan.configNumbers })) }];
  // The model's generation settings (an eos list, sampling defaults), as save_pretrained keeps them.
  if (existsSync(join(c.tokenizerDir, GENERATION_CONFIG))) out.push({ files: [GENERATION_CONFIG], producer: 'generation-config', write: (dir) => copyFile(join(c.tokenizerDir, GENERATION_CONFIG), join(dir, GENERATION_CONFIG)) });
  if (c.copyTokenizer) {
    const files: string[] = [...TOKENIZER_FILES, ...CHAT_TEMPLATE_FILES].filter((f) => existsSync(join(c.tokenizerDir, f)));
    for (const f of ['tokenizer_config.json', 'special_tokens_map.json']) if (!files.includes(f)) files.push(f);
    out.push({ files, producer: 'tokenizer', write: (dir) => writeTokenizer(c.tokenizerDir, dir) });
  }
  if (c.writeRecipe !== false) {
    out.push({ files: ['mergekit_moe_config.yml'], producer: 'recipe', write: (dir) => writeFile(join(dir, 'mergekit_moe_config.yml'), c.recipeText) });
    out.push({
      files: ['README.md'],
      producer: 'model-card',
      // The reference writes no model card; a README with front matter makes the output findable on the Hub.
      write: async (dir) => {
        const { recipe } = parseRecipeText(c.recipeText, 'mergekit_moe_config.yml');
        await writeFile(join(dir, 'README.md'), modelCard({ plan: c.plan, recipe, recipeText: c.recipeText, gateMode: recipe.gate_mode, routing: c.routing?.report }));
      },
    });
    if (c.withRouting) out.push({ files: ['routing.html'], producer: 'routing', write: (dir) => writeFile(join(dir, 'routing.html'), c.routing!.html) });
  }
  return out;
}

export function indexEntry(shards: ShardPlan[]): ManifestEntry[] {
  return shards.length > 1 ? [{ files: ['model.safetensors.index.json'], producer: 'index', write: (dir) => writeFile(join(dir, 'model.safetensors.index.json'), indexJson(shards)) }] : [];
}

/** Bumped when the GGUF writer's output for the same inputs changes, so a stamped GGUF is not kept across it. */
const GGUF_WRITER = 'moe-forge-gguf-1';

export interface GgufInputs {
  type: GgufOutType;
  /** No safetensors shards: the GGUF's tensors come from the producer. */
  only: boolean;
  tokenizerDir: string;
}

/** The GGUF's layout (refused here, before any work, for what llama.cpp cannot take). */
export function ggufPlan(plan: MergePlan, shards: ShardPlan[], type: GgufOutType): GgufLayout {
  const byName = new Map(plan.tensors.map((t) => [t.name, t]));
  return ggufLayout(plan, converterOrder(shards.map((s) => s.tensors.map((t) => byName.get(t.name)!))), type);
}

/**
 * The GGUF file: its key is what decides its bytes (every shard's content key, the config, the tokenizer
 * files, the type and the writer); it is made from the shards in the folder (as the converter reads them) or,
 * with no shards, from the tensor producer.
 */
export async function ggufEntry(plan: MergePlan, shards: ShardPlan[], shardHashes: Record<string, string>, g: GgufInputs, produce: () => (t: PlanTensor) => AsyncIterable<Buffer>, pool: ChunkPool, log?: (l: string) => void): Promise<ManifestEntry & { layout: GgufLayout }> {
  const layout = ggufPlan(plan, shards, g.type);
  const h = createHash('sha256').update(JSON.stringify([GGUF_WRITER, g.type, shards.map((s) => [s.file, shardHashes[s.file]]), plan.config]));
  for (const f of [...TOKENIZER_FILES, ...CHAT_TEMPLATE_FILES]) {
    const p = join(g.tokenizerDir, f);
    if (existsSync(p)) h.update(f).update(createHash('sha256').update(await readFile(p)).digest('hex'));
  }
  const file = ggufFileName(g.type);
  const bytes = layout.tensors.reduce((a, t) => a + t.segments.reduce((b, s) => b + s.count, 0) * (t.type === 'F32' ? 4 : t.type === 'Q8_0' ? 34 / 32 : 2), 0);
  return {
    files: [file],
    producer: 'gguf',
    key: h.digest('hex'),
    bytes: Math.ceil(bytes) + (1 << 20),
    layout,
    write: async (dir) => {
      log?.(`writing ${file} (${layout.tensors.length} tensors, ${g.type})`);
      const source = g.only ? producerSource(produce()) : shardSource(await SafetensorsWeights.openFiles(dir, shards.map((s) => join(dir, s.file))), pool);
      // The tokenizer keys from the folder being written (its config.json and tokenizer files, written before
      // the GGUF), as the converter reads them: the written tokenizer_config.json carries our pad token.
      await writeModelGguf(join(dir, file), layout, await vocabKeys(dir), source, { pool });
    },
  };
}
