import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { missingStageFile, PROMPT_STATES_SCHEMA, readStageJson, refuseStageFile, writeStageFile } from '../stage-files';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { decodeFloats, f32Values } from '../safetensors';
import { readRows, readTensorBytes, SafetensorsWeights, type TensorLocation } from '../safetensors';
import { encodeHeader } from '../safetensors';
import { loadTokenizer } from '../tokenizer';
import { ModelError } from '../errors';
import type { ModelSource } from '../architectures';
import type { MergeContext } from './context';
import { ContentCache } from '../cache';
import { computePadStatesIsolated as computePadStates, computePromptStatesIsolated as computePromptStates, prepareForwardWorker, type Device, type ForwardPrecision } from '../forward';
import { getPadState, getPromptState, promptStateListed, putPadState, putPromptState, type CachedPromptState } from '../prompt-cache';
import { fileKey, type Progress } from '../util';
import { GATE_MODES, type PromptStateKind } from '../gates';
import { cachedRouterInputs, fitUnits, unitTensor, type FitUnit } from './fit-states';
import { cachedPerPrompt } from './per-prompt-cache';

/** One distinct prompt text with its token ids and reduced states per layer input. */
export interface PromptStateEntry {
  text: string;
  ids: number[];
  count: number;
}

export interface PromptStatesIndex {
  version: 1;
  mode: PromptStateKind;
  /** Execution provider asked for the forward pass (hidden modes), for provenance and option checks. */
  device: string | null;
  layers: number;
  hidden: number;
  prompts: PromptStateEntry[];
  computed: number;
  fromCache: number;
}

/** All prompt texts of the gated experts, deduplicated, in first-seen order. */
export function distinctPrompts(merge: MergeContext): string[] {
  const seen = new Set<string>();
  for (const ex of merge.gatedExperts) {
    for (const p of [...(ex.spec.positive_prompts ?? []), ...(ex.spec.negative_prompts ?? [])]) seen.add(p);
  }
  return [...seen];
}

/** The base's `model.embed_tokens.weight` (never lm_head, as the reference). */
function embeddingTensor(base: ModelSource): TensorLocation {
  const name = 'model.embed_tokens.weight';
  if (!base.weights.has(name)) {
    throw new ModelError('missing_tensor', `cheap_embed needs the base model's token embeddings, which ${base.ref} lacks`, { file: base.dir, tensor: name });
  }
  return base.weights.get(name);
}

export interface EmbedOptions {
  /** Prompt-state cache folder (cacache). */
  cacheDir: string;
  device?: string;
  /** The forward pass's arithmetic (default fp32, exact); int8 states are cached apart from fp32 ones. */
  forwardPrecision?: ForwardPrecision;
  log?: (line: string) => void;
  /** Problems the merge goes on from (an unusable cache); default: the log. */
  warn?: (line: string) => void;
  /** What this run did (computed vs. from the cache, forward-pass time); default: log. Nx replays a cached
   * stage's output later, where these numbers would be stale, so the executor sends them to debug output. */
  stats?: (line: string) => void;
  /** Per-prompt cache hits and misses. */
  debug?: (line: string) => void;
  progress?: Progress;
  /** Called with the token ids of every text before any forward pass: throws for a prompt the base cannot take. */
  checkIds?: (ids: number[][]) => void;
  /** Read nothing from the cache: every prompt state (and the base's content id) is computed again. */
  recompute?: boolean;
}

/**
 * Stage 2: per distinct prompt, token ids and reduced states. cheap_embed keeps the sum of the prompt's
 * token embeddings (one "layer"). Hidden modes keep, per layer input, the last token's state and the sum
 * over tokens, cached per prompt by content so that only prompts never seen with this base are computed.
 */
export async function runEmbedPrompts(merge: MergeContext, outDir: string, opts: EmbedOptions): Promise<PromptStatesIndex> {
  const { ctx } = merge;
  await mkdir(outDir, { recursive: true });
  const { mode, layers, hidden } = expectedPromptStates(merge);
  const index: PromptStatesIndex = { version: 1, mode, device: mode === 'hidden' || mode === 'router_input' ? opts.device ?? 'cpu' : null, layers, hidden, prompts: [], computed: 0, fromCache: 0 };
  const tensors: StateTensor[] = [];
  if (mode === 'cheap_embed') {
    const texts = distinctPrompts(merge);
    for (const [i, { ids, sum }] of (await embeddingSums(ctx.base, texts)).entries()) {
      tensors.push({ name: `p${index.prompts.length}.sum`, rows: [sum] });
      index.prompts.push({ text: texts[i]!, ids, count: ids.length });
      index.computed++;
    }
  } else if (mode === 'hidden') {
    await hiddenStates(merge, index, tensors, opts);
  } else if (mode === 'router_input') {
    await routerInputStates(merge, index, tensors, opts);
  }
  await writeStates(join(outDir, 'prompt-states.safetensors'), tensors, Math.max(index.layers, 1));
  await writeStageFile(join(outDir, 'prompt-states.json'), JSON.stringify(index, null, 2) + '\n');
  await writeFile(join(outDir, 'stats.json'), JSON.stringify({ computed: index.computed, fromCache: index.fromCache }, null, 2) + '\n');
  (opts.stats ?? opts.log)?.(`prompt states: ${index.computed} computed, ${index.fromCache} from cache`);
  return index;
}

async function hiddenStates(merge: MergeContext, index: PromptStatesIndex, tensors: StateTensor[], opts: EmbedOptions): Promise<void> {
  const { base } = merge.ctx;
  const texts = distinctPrompts(merge);
  const { states, computed, fromCache, baseId, padTokenId, device, precision } = await cachedHiddenStates(base, texts, { ...opts, checkIds: (ids) => checkPromptLengths(merge, ids, texts) });
  index.computed = computed;
  index.fromCache = fromCache;
  states.forEach((s, i) => {
    index.prompts.push({ text: texts[i]!, ids: s.ids, count: s.count });
    tensors.push({ name: `p${i}.last`, rows: s.last }, { name: `p${i}.sum`, rows: s.sum });
  });
  if (GATE_MODES[merge.ctx.gateMode].reduction === 'avg') {
    const cache = new ContentCache(opts.cacheDir, opts.warn ?? opts.log, { recompute: opts.recompute });
    const L = base.config.numLayers;
    const H = base.config.hiddenSize;
    // The reference's padded mean needs the state of a pad position; it depends only on the base.
    const material = { base: baseId, padTokenId, layers: L, hidden: H, ...precisionKey(precision) };
    let pad = await getPadState(cache, material);
    if (!pad) {
      pad = await computePadStates(base.dir, padTokenId, { device, precision });
      await putPadState(cache, material, pad);
    }
    tensors.push({ name: 'pad', rows: pad });
  }
}

/**
 * fit: every token's router input per layer of each unit (fitUnits: a prompt through the base with the MLPs of an
 * expert that lists it, or through the base), [L, T * H]; and per prompt its first unit's last token and sum
 * (`pN.last`, `pN.sum`), which the routing report reads as it reads hidden states.
 */
async function routerInputStates(merge: MergeContext, index: PromptStatesIndex, tensors: StateTensor[], opts: EmbedOptions): Promise<void> {
  const texts = distinctPrompts(merge);
  const H = merge.ctx.base.config.hiddenSize;
  const units = fitUnits(merge, texts);
  const got = new Map<FitUnit, { ids: number[]; tokens: Float32Array[] }>();
  const sources = [...new Set(units.map((u) => u.source))];
  for (const source of sources) {
    const mine = units.filter((u) => u.source === source);
    const mlp = source === null ? undefined : merge.gatedExperts[source]!.model;
    const r = await cachedRouterInputs(merge.ctx.base, mine.map((u) => texts[u.prompt]!), { ...opts, checkIds: (ids) => checkPromptLengths(merge, ids, mine.map((u) => texts[u.prompt]!)) }, mlp);
    index.computed += r.computed;
    index.fromCache += r.fromCache;
    mine.forEach((u, j) => got.set(u, r.states[j]!));
  }
  texts.forEach((text, i) => {
    const s = got.get(units.find((u) => u.prompt === i)!)!;
    const T = s.ids.length;
    index.prompts.push({ text, ids: s.ids, count: T });
    const last = s.tokens.map((x) => x.slice((T - 1) * H));
    const sum = s.tokens.map((x) => {
      const acc = new Float64Array(H);
      for (let t = 0; t < T; t++) for (let k = 0; k < H; k++) acc[k]! += x[t * H + k]!;
      return Float32Array.from(acc);
    });
    tensors.push({ name: `p${i}.last`, rows: last }, { name: `p${i}.sum`, rows: sum });
  });
  for (const u of units) tensors.push({ name: unitTensor(u), rows: got.get(u)!.tokens });
}

export interface HiddenStatesResult {
  /** One per text, in order. */
  states: CachedPromptState[];
  computed: number;
  fromCache: number;
  baseId: string;
  padTokenId: number;
  device: Device;
  precision: ForwardPrecision;
}

/** A cache entry's precision: absent for fp32, so exact entries keep the keys they always had. */
export const precisionKey = (p: ForwardPrecision): { precision?: 'int8' | 'bf16' } => (p === 'fp32' ? {} : { precision: p });

/**
 * Per-layer states of prompts through the base, each read from the content-addressed cache or computed
 * (all misses in one forward pass) and stored there: the one path for gate prompts and report prompts alike.
 */
export async function cachedHiddenStates(base: ModelSource, texts: string[], opts: EmbedOptions): Promise<HiddenStatesResult> {
  const L = base.config.numLayers;
  const H = base.config.hiddenSize;
  const precision = opts.forwardPrecision ?? 'fp32';
  const r = await cachedPerPrompt(base, texts, opts, {
    label: 'prompt-state',
    material: precisionKey(precision),
    get: (c, m) => getPromptState(c, m),
    listed: (c, m) => promptStateListed(c, m),
    put: (c, m, v) => putPromptState(c, m, v),
    prepare: (device) => prepareForwardWorker('prompts', base.dir, { device, precision }),
    async compute(ids, device, onProgress) {
      const computed = await computePromptStates(base.dir, ids, { device, precision, onProgress });
      return computed.map((per, j) => ({ ids: ids[j]!, count: per[0]!.count, layers: L, hidden: H, last: per.map((x) => x.last), sum: per.map((x) => x.sum) }));
    },
  });
  return { states: r.values, computed: r.computed, fromCache: r.fromCache, baseId: r.baseId, padTokenId: r.padTokenId, device: r.device, precision };
}

/** cheap_embed states: per text, its token ids and the sum of their embedding rows (float64 sum, stored float32). */
export async function embeddingSums(base: ModelSource, texts: string[]): Promise<{ ids: number[]; sum: Float32Array }[]> {
  const H = base.config.hiddenSize;
  const tok = await loadTokenizer(base.dir);
  const idsOf = texts.map((t) => tok.encodePrompt(t));
  const rows = await readRows(embeddingTensor(base), idsOf.flat());
  return idsOf.map((ids) => {
    const sum = new Float64Array(H);
    for (const id of ids) {
      const r = rows.get(id)!;
      for (let k = 0; k < H; k++) sum[k] += r[k]!;
    }
    return { ids, sum: Float32Array.from(sum) };
  });
}

/** A prompt longer than the base's context cannot be run through it: name the expert, prompt, count and limit. */
function checkPromptLengths(merge: MergeContext, ids: number[][], texts: string[]): void {
  const limit = merge.ctx.base.config.raw.max_position_embeddings;
  if (typeof limit !== 'number') return;
  for (const [i, t] of ids.entries()) {
    if (t.length <= limit) continue;
    const text = texts[i]!;
    const ex = merge.gatedExperts.find((e) => [...(e.spec.positive_prompts ?? []), ...(e.spec.negative_prompts ?? [])].includes(text))!;
    const field = `${ex.shared ? 'shared_experts' : 'experts'}[${ex.index}]`;
    const short = text.length > 60 ? `${text.slice(0, 57)}...` : text;
    throw new ModelError('prompt_too_long', `prompt ${JSON.stringify(short)} of ${field} (${ex.model.ref}) is ${t.length} tokens long, more than the ${limit} of the base model ${merge.ctx.base.ref} (max_position_embeddings): shorten it`, { file: merge.parsed.file, field, ...merge.parsed.position([ex.shared ? 'shared_experts' : 'experts', ex.index]) });
  }
}

/** A tensor of the states file: [layers, width], one row per layer, each as computed (written without a copy). */
interface StateTensor {
  name: string;
  rows: Float32Array[];
}

/**
 * The states file this process wrote last: its stat key right after the write (`fileKey`) and each tensor's rows as
 * written. The next stage of the same process (the command's pipeline) takes the rows from here while the file still
 * has that key, instead of reading it back into fresh memory (6.5 MB at TinyLlama's shape, 10 MB at Mistral-7B's:
 * ~40 ms of a one-prompt edit's end). The key is racy by then (taken as the file was written), which a memo kept
 * between commands never trusts: this one lives for the process and its stage folder, and a stage run by itself
 * (Nx) reads the file.
 */
let written: { file: string; key: string; rows: Map<string, Float32Array[]> } | null = null;

/** readPromptStates' reads served from `written` (tests read this). */
export const promptStatesStats = { fromMemory: 0 };

async function writeStates(file: string, tensors: StateTensor[], layers: number): Promise<void> {
  written = null;
  for (const t of tensors) {
    if (t.rows.length !== layers || t.rows.some((r) => r.length !== t.rows[0]!.length)) throw new Error(`internal: ${t.name} is not ${layers} rows of one width`);
  }
  const specs = tensors.map((t) => ({ name: t.name, dtype: 'F32', shape: [layers, t.rows[0]!.length] }));
  const body = tensors.flatMap((t) => t.rows.map((r) => new Uint8Array(r.buffer, r.byteOffset, r.byteLength)));
  const fh = await open(file, 'w');
  try {
    // writev takes at most IOV_MAX (1024) buffers a call.
    const parts = [encodeHeader(specs), ...body];
    for (let i = 0; i < parts.length; i += 1024) {
      const batch = parts.slice(i, i + 1024);
      const want = batch.reduce((a, b) => a + b.byteLength, 0);
      const { bytesWritten } = await fh.writev(batch);
      if (bytesWritten !== want) await fh.write(Buffer.concat(batch).subarray(bytesWritten)); // a short write: the rest
    }
  } finally {
    await fh.close();
  }
  // Kept only where the file is one a reader takes whole (reduced states): every token's states (fit) may be large,
  // and holding them past the stage would raise the command's peak memory.
  const bytes = tensors.reduce((a, t) => a + t.rows.reduce((b, r) => b + r.byteLength, 0), 0);
  const key = bytes <= WHOLE_STATES_BYTES ? fileKey(file) : null;
  if (key) written = { file: resolve(file), key, rows: new Map(tensors.map((t) => [t.name, t.rows])) };
}

/** Prompt-state files read whole up to this size (the tensors within it); beyond, tensor by tensor. */
const WHOLE_STATES_BYTES = 64 << 20;

/**
 * The embed-prompts stage's output, checked as a stage file: prompt-states.json of the mode and sizes the merge
 * needs, holding every prompt asked for, and each tensor of prompt-states.safetensors F32 [layers, hidden].
 */
export async function readPromptStates(dir: string, expect: { mode: PromptStatesIndex['mode']; layers: number; hidden: number; prompts: string[] }): Promise<{ index: PromptStatesIndex; tensor(name: string): Promise<Float32Array>; rows(name: string): Promise<Float32Array[]>; tokens(name: string, count: number): Promise<Float32Array> }> {
  const file = join(dir, 'prompt-states.json');
  const index = await readStageJson<PromptStatesIndex>(file, PROMPT_STATES_SCHEMA, 1, 'embed-prompts');
  if (index.mode !== expect.mode || index.layers !== expect.layers || index.hidden !== expect.hidden) {
    throw refuseStageFile(file, `it holds ${index.mode} states of ${index.layers} layers x ${index.hidden}, but the merge needs ${expect.mode} states of ${expect.layers} x ${expect.hidden}`);
  }
  const have = new Set(index.prompts.map((p) => p.text));
  const lacking = expect.prompts.find((t) => !have.has(t));
  if (lacking !== undefined) throw refuseStageFile(file, `it lacks the prompt ${JSON.stringify(lacking.length > 60 ? `${lacking.slice(0, 57)}...` : lacking)}`);
  const states = join(dir, 'prompt-states.safetensors');
  if (!existsSync(states)) throw missingStageFile(states, 'embed-prompts');
  let weights: SafetensorsWeights;
  try {
    weights = await SafetensorsWeights.openFiles(dir, [states]);
  } catch (e) {
    throw refuseStageFile(states, (e as Error).message.replace(`${states}: `, ''));
  }
  // A file of reduced states (a few MB) is read once; every token's states (fit) may be large: tensor by tensor.
  let whole: Promise<Buffer> | null = null;
  const small = (await stat(states)).size <= WHOLE_STATES_BYTES;
  // Written by this process and unchanged since: its rows as written (checked against the header as a read is).
  const mine = written !== null && written.file === resolve(states) && written.key === fileKey(states) ? written.rows : null;
  const located = (name: string, width: number) => {
    if (!weights.has(name)) throw refuseStageFile(states, 'the tensor is missing', { tensor: name });
    const loc = weights.get(name);
    if (loc.dtype !== 'F32' || loc.shape.join() !== [index.layers, width].join()) throw refuseStageFile(states, `${loc.dtype} [${loc.shape.join(', ')}], expected F32 [${index.layers}, ${width}]`, { tensor: name });
    return loc;
  };
  const read = async (name: string, width: number) => {
    const loc = located(name, width);
    if (!small) return decodeFloats(await readTensorBytes(loc), 'F32');
    whole ??= readFile(states);
    const bytes = await whole;
    if (loc.offset + loc.byteLength > bytes.length) throw refuseStageFile(states, `file ended while reading ${loc.byteLength} bytes`, { tensor: name });
    // A view of the file's bytes (safetensors pads its header to 8 bytes, so F32 tensors lie aligned): no copy.
    return f32Values(bytes.subarray(loc.offset, loc.offset + loc.byteLength));
  };
  return {
    index,
    tensor: (name) => read(name, index.hidden),
    // [layers, hidden] as one array per layer: the rows as written where this process wrote the file.
    async rows(name) {
      located(name, index.hidden);
      const kept = mine?.get(name);
      if (kept && kept.length === index.layers && kept.every((r) => r.length === index.hidden)) {
        promptStatesStats.fromMemory++;
        return kept;
      }
      const v = await read(name, index.hidden);
      return Array.from({ length: index.layers }, (_, l) => v.subarray(l * index.hidden, (l + 1) * index.hidden));
    },
    // Every token of a prompt per layer (fit): [layers, count * hidden].
    tokens: (name, count) => read(name, count * index.hidden),
  };
}

/** What readPromptStates must find for this merge: the mode, sizes and prompts runEmbedPrompts writes for it. */
export function expectedPromptStates(merge: MergeContext): { mode: PromptStatesIndex['mode']; layers: number; hidden: number; prompts: string[] } {
  const { ctx } = merge;
  const mode = GATE_MODES[ctx.gateMode].states;
  // Token-embedding sums are one "layer"; hidden states one per layer input.
  const layers = { cheap_embed: 1, hidden: ctx.base.config.numLayers, router_input: ctx.base.config.numLayers, none: 0 }[mode];
  return { mode, layers, hidden: ctx.base.config.hiddenSize, prompts: mode === 'none' ? [] : distinctPrompts(merge) };
}
