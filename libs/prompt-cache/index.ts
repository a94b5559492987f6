import { createHash } from 'node:crypto';
import type { ContentCache } from '../cache';
import type { IdsMemo } from '../tokenizer';

/**
 * The forward pass's version for a run of `tokens` tokens: bump when its numbers change, so old entries miss instead
 * of being reused. v2 for one token: before it a lone one-token run (every pad state) took onnxruntime's one-row
 * matmul and rounded apart from packed runs; it now runs with a twin, as a packed one. Longer prompts' states did
 * not change (the same sums in the same order), so they stay v1 and their entries stay good.
 */
export function forwardVersion(tokens: number): string {
  return tokens === 1 ? 'forward-f32-v2' : 'forward-f32-v1';
}

/** What is kept per prompt: per layer input, the last token's state and the sum over tokens. */
export interface CachedPromptState {
  ids: number[];
  count: number;
  layers: number;
  hidden: number;
  last: Float32Array[];
  sum: Float32Array[];
}

/** Everything a prompt's states are computed from: stored in the entry and compared on read (ContentCache.getBound). */
export interface PromptStateMaterial {
  /** The base's content id and the tokenizer's. */
  base: string;
  tokenizer: string;
  text: string;
  ids: number[];
  layers: number;
  hidden: number;
  /** The forward pass's arithmetic when not exact float32 (absent: fp32, whose keys stay as they were). */
  precision?: 'int8' | 'bf16';
}

/** What a non-exact forward adds to a key and to its material: nothing for fp32. */
const precisionPart = (precision: string | undefined) => (precision && precision !== 'fp32' ? { precision } : {});

function digest(parts: unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

/**
 * Keyed by content, never by path: the base's content id, the tokenizer's, the prompt text, the pass version (of the
 * prompt's token count, which the tokenizer and text decide).
 */
export function promptStateKey(baseContentId: string, tokenizerId: string, text: string, tokens: number, precision?: string): string {
  const p = precisionPart(precision);
  return `prompt-state:${digest([forwardVersion(tokens), baseContentId, tokenizerId, text, ...Object.values(p)])}`;
}

export function padStateKey(baseContentId: string, padTokenId: number, precision?: string): string {
  const p = precisionPart(precision);
  return `pad-state:${digest([forwardVersion(1), baseContentId, padTokenId, ...Object.values(p)])}`;
}

/** The key material as stored: the text by its hash (an entry need not hold the prompt). */
function promptMaterial(m: PromptStateMaterial): unknown {
  return { mode: 'prompt-state', forward: forwardVersion(m.ids.length), base: m.base, tokenizer: m.tokenizer, text: createHash('sha256').update(m.text).digest('hex'), ids: m.ids, layers: m.layers, hidden: m.hidden, ...precisionPart(m.precision) };
}

const floatBytes = (layers: number, hidden: number) => 2 * layers * hidden * 4;

function toFloats(b: Buffer): Float32Array {
  // The cache reads an entry so that its data lies 4-byte aligned (a view of it then); else a copy.
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
  const f = new Float32Array(b.length / 4);
  Buffer.from(f.buffer).set(b);
  return f;
}

export async function getPromptState(cache: ContentCache, m: PromptStateMaterial): Promise<CachedPromptState | null> {
  const want = floatBytes(m.layers, m.hidden);
  const b = await cache.getBound(promptStateKey(m.base, m.tokenizer, m.text, m.ids.length, m.precision), promptMaterial(m), want);
  if (!b || b.length !== want) return null;
  const floats = toFloats(b);
  const slice = (i: number) => floats.subarray(i * m.hidden, (i + 1) * m.hidden);
  return {
    ids: m.ids,
    count: m.ids.length,
    layers: m.layers,
    hidden: m.hidden,
    last: Array.from({ length: m.layers }, (_, l) => slice(l)),
    sum: Array.from({ length: m.layers }, (_, l) => slice(m.layers + l)),
  };
}

/** Whether the index names an entry for `m` (not read, not checked: getPromptState is what trusts it). */
export function promptStateListed(cache: ContentCache, m: PromptStateMaterial): Promise<boolean> {
  return cache.mayHave(promptStateKey(m.base, m.tokenizer, m.text, m.ids.length, m.precision));
}

export async function putPromptState(cache: ContentCache, m: PromptStateMaterial, s: CachedPromptState): Promise<void> {
  const floats = new Float32Array(2 * m.layers * m.hidden);
  for (let l = 0; l < m.layers; l++) {
    floats.set(s.last[l]!, l * m.hidden);
    floats.set(s.sum[l]!, (m.layers + l) * m.hidden);
  }
  await cache.putBound(promptStateKey(m.base, m.tokenizer, m.text, m.ids.length, m.precision), promptMaterial(m), Buffer.from(floats.buffer));
}

/** The state of a pad position per layer input, bound to the base, its pad token and the sizes. */
export interface PadStateMaterial {
  base: string;
  padTokenId: number;
  layers: number;
  hidden: number;
  precision?: 'int8' | 'bf16';
}

const padMaterial = (m: PadStateMaterial) => ({ mode: 'pad-state', forward: forwardVersion(1), ...m });

export async function getPadState(cache: ContentCache, m: PadStateMaterial): Promise<Float32Array[] | null> {
  const want = m.layers * m.hidden * 4;
  const b = await cache.getBound(padStateKey(m.base, m.padTokenId, m.precision), padMaterial(m), want);
  if (!b || b.length !== want) return null;
  const f = toFloats(b);
  return Array.from({ length: m.layers }, (_, l) => f.subarray(l * m.hidden, (l + 1) * m.hidden));
}

export async function putPadState(cache: ContentCache, m: PadStateMaterial, layers: Float32Array[]): Promise<void> {
  await cache.putBound(padStateKey(m.base, m.padTokenId, m.precision), padMaterial(m), Buffer.concat(layers.map((l) => Buffer.from(l.buffer, l.byteOffset, l.byteLength))));
}

/**
 * gate_mode fit: every token's router input per layer, [layer][T * H], bound like a prompt state, and to the model
 * whose MLPs ran behind the base's attention (`mlp`: its content id; null: the base's own).
 */
export interface RouterInputMaterial extends PromptStateMaterial {
  mlp: string | null;
}

export function routerInputKey(baseContentId: string, tokenizerId: string, text: string, tokens: number, mlp: string | null): string {
  return `router-input:${digest([forwardVersion(tokens), baseContentId, tokenizerId, text, mlp])}`;
}

function routerMaterial(m: RouterInputMaterial): unknown {
  return { ...(promptMaterial(m) as object), mode: 'router-input', mlp: m.mlp };
}

export async function getRouterInputs(cache: ContentCache, m: RouterInputMaterial): Promise<Float32Array[] | null> {
  const per = m.ids.length * m.hidden;
  const want = m.layers * per * 4;
  const b = await cache.getBound(routerInputKey(m.base, m.tokenizer, m.text, m.ids.length, m.mlp), routerMaterial(m), want);
  if (!b || b.length !== want) return null;
  const f = toFloats(b);
  return Array.from({ length: m.layers }, (_, l) => f.subarray(l * per, (l + 1) * per));
}

/** Whether the index names an entry for `m` (not read, not checked: getRouterInputs is what trusts it). */
export function routerInputsListed(cache: ContentCache, m: RouterInputMaterial): Promise<boolean> {
  return cache.mayHave(routerInputKey(m.base, m.tokenizer, m.text, m.ids.length, m.mlp));
}

export async function putRouterInputs(cache: ContentCache, m: RouterInputMaterial, layers: Float32Array[]): Promise<void> {
  await cache.putBound(routerInputKey(m.base, m.tokenizer, m.text, m.ids.length, m.mlp), routerMaterial(m), Buffer.concat(layers.map((l) => Buffer.from(l.buffer, l.byteOffset, l.byteLength))));
}

/**
 * `memo` with its writes held until `flush()` runs them (not awaited: only a head start for the next command): a
 * put loads cacache (~20 ms), and the compact tokenizer takes ~0.4 s of CPU to make for Llama 3's, which a caller
 * about to start a forward pass puts after that start.
 */
export function heldPuts(memo: IdsMemo): { memo: IdsMemo; flush(): void } {
  const held: (() => Promise<void>)[] = [];
  return {
    memo: {
      ...memo,
      put: async (...a) => void held.push(() => memo.put(...a)),
      ...(memo.putBytes ? { putBytes: async (...a: Parameters<NonNullable<IdsMemo['putBytes']>>) => void held.push(() => memo.putBytes!(...a)) } : {}),
    },
    flush: () => {
      for (const put of held.splice(0)) put().catch(() => undefined);
    },
  };
}

/** Prompt ids remembered in the prompt-state cache (libs/tokenizer's promptIds): a few hundred bytes an entry. */
export function promptIdsMemo(cache: ContentCache): IdsMemo {
  return {
    get: (key, material) => cache.getBoundJson(key, material, 1 << 20),
    put: (key, material, value) => cache.putBoundJson(key, material, value),
    // The compact tokenizer (libs/tokenizer/compact.ts): ~9 MB for Llama 3's.
    getBytes: (key, material, maxBytes) => cache.getBound(key, material, maxBytes),
    putBytes: async (key, material, data) => {
      const bytes = data();
      if (bytes) await cache.putBound(key, material, bytes);
    },
  };
}
