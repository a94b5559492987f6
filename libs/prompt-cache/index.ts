import { createHash } from 'node:crypto';
import type { ContentCache } from '../cache';

/** Bump when the forward pass changes numerically: old entries then miss instead of being reused. */
export const FORWARD_VERSION = 'forward-f32-v1';

/** What is kept per prompt: per layer input, the last token's state and the sum over tokens. */
export interface CachedPromptState {
  ids: number[];
  count: number;
  layers: number;
  hidden: number;
  last: Float32Array[];
  sum: Float32Array[];
}

function digest(parts: unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
}

/** Keyed by content, never by path: the base's content id, the tokenizer's, the prompt text, the pass version. */
export function promptStateKey(baseContentId: string, tokenizerId: string, text: string): string {
  return `prompt-state:${digest([FORWARD_VERSION, baseContentId, tokenizerId, text])}`;
}

export function padStateKey(baseContentId: string, padTokenId: number): string {
  return `pad-state:${digest([FORWARD_VERSION, baseContentId, padTokenId])}`;
}

export function encodeState(s: CachedPromptState): Buffer {
  const meta = Buffer.from(JSON.stringify({ ids: s.ids, count: s.count, layers: s.layers, hidden: s.hidden }));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(meta.length);
  const floats = new Float32Array(2 * s.layers * s.hidden);
  for (let l = 0; l < s.layers; l++) {
    floats.set(s.last[l]!, l * s.hidden);
    floats.set(s.sum[l]!, (s.layers + l) * s.hidden);
  }
  const pad = Buffer.alloc((4 - ((4 + meta.length) % 4)) % 4);
  return Buffer.concat([len, meta, pad, Buffer.from(floats.buffer)]);
}

/** Null when the bytes do not have the expected shape (an entry from an incompatible version). */
export function decodeState(b: Buffer): CachedPromptState | null {
  try {
    const n = b.readUInt32LE(0);
    const meta = JSON.parse(b.subarray(4, 4 + n).toString('utf8')) as Omit<CachedPromptState, 'last' | 'sum'>;
    const start = 4 + n + ((4 - ((4 + n) % 4)) % 4);
    const want = 2 * meta.layers * meta.hidden * 4;
    if (b.length - start !== want) return null;
    const floats = new Float32Array(b.buffer.slice(b.byteOffset + start, b.byteOffset + start + want));
    const slice = (i: number) => floats.subarray(i * meta.hidden, (i + 1) * meta.hidden);
    return {
      ...meta,
      last: Array.from({ length: meta.layers }, (_, l) => slice(l)),
      sum: Array.from({ length: meta.layers }, (_, l) => slice(meta.layers + l)),
    };
  } catch {
    return null;
  }
}

export function encodeLayers(layers: Float32Array[]): Buffer {
  return Buffer.concat(layers.map((l) => Buffer.from(l.buffer, l.byteOffset, l.byteLength)));
}

export function decodeLayers(b: Buffer, layers: number, hidden: number): Float32Array[] | null {
  if (b.length !== layers * hidden * 4) return null;
  const f = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  return Array.from({ length: layers }, (_, l) => f.subarray(l * hidden, (l + 1) * hidden));
}

export async function getPromptState(cache: ContentCache, key: string): Promise<CachedPromptState | null> {
  const b = await cache.getBuffer(key);
  if (!b) return null;
  const s = decodeState(b);
  if (!s) await cache.remove(key);
  return s;
}
