/**
 * Compares GGUF metadata and tensors with the manifests scripts/record-gguf-fixtures.py recorded from llama.cpp's
 * converter (test/fixtures/gguf/README.md): key by key and tensor by tensor, each difference named.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { GgufFile } from '../../libs/gguf/reader';
import { readTensorData } from '../../libs/gguf/reader';
import type { GgufScalar, GgufScalarType, GgufValue } from '../../libs/gguf/types';
import { FIXTURES } from './tmp';

export const GGUF_FIXTURES = join(FIXTURES, 'gguf');

export interface ManifestKv {
  key: string;
  type: GgufScalarType | 'array';
  itemType?: GgufScalarType;
  length?: number;
  value?: unknown;
  sha256?: string;
}
export interface ManifestTensor {
  name: string;
  shape: number[];
  type: string;
  bytes: number;
  sha256: string;
}
export interface Manifest {
  version?: number;
  metadata: ManifestKv[];
  tensors?: ManifestTensor[];
}

export function readManifest(name: string): Manifest {
  return JSON.parse(readFileSync(join(GGUF_FIXTURES, name), 'utf8')) as Manifest;
}

export function readIndex(): {
  llama_cpp: string;
  forced_pre: string;
  outputs: Record<string, { recipe: Record<string, unknown>; args: string[]; refused_by_converter: boolean; types: Record<string, string>; greedy: { prompt: string; input_ids: number[]; new_tokens: number[] } }>;
  tokenizers: Record<string, { package: string | null; model_file?: string; architecture: string; vocab_size: number; manifest: string }>;
} {
  return JSON.parse(readFileSync(join(GGUF_FIXTURES, 'index.json'), 'utf8'));
}

const INLINE_ITEMS = 16;
const NUMBER_WRITERS: Record<string, [number, (b: Buffer, v: number, o: number) => void]> = {
  u8: [1, (b, v, o) => b.writeUInt8(v, o)],
  i8: [1, (b, v, o) => b.writeInt8(v, o)],
  u16: [2, (b, v, o) => b.writeUInt16LE(v, o)],
  i16: [2, (b, v, o) => b.writeInt16LE(v, o)],
  u32: [4, (b, v, o) => b.writeUInt32LE(v, o)],
  i32: [4, (b, v, o) => b.writeInt32LE(v, o)],
  f32: [4, (b, v, o) => b.writeFloatLE(v, o)],
  f64: [8, (b, v, o) => b.writeDoubleLE(v, o)],
};

/** The manifest's canonical encoding of array items: as GGUF stores them (strings as u64 length + UTF-8). */
export function encodeItems(itemType: GgufScalarType, items: readonly GgufScalar[]): Buffer {
  if (itemType === 'string') {
    return Buffer.concat(items.map((s) => {
      const b = Buffer.from(String(s), 'utf8');
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(b.length));
      return Buffer.concat([len, b]);
    }));
  }
  if (itemType === 'bool') return Buffer.from(items.map((v) => (v ? 1 : 0)));
  if (itemType === 'u64' || itemType === 'i64') {
    const b = Buffer.alloc(8 * items.length);
    items.forEach((v, i) => (itemType === 'u64' ? b.writeBigUInt64LE(BigInt(v as number), 8 * i) : b.writeBigInt64LE(BigInt(v as number), 8 * i)));
    return b;
  }
  const [size, write] = NUMBER_WRITERS[itemType]!;
  const b = Buffer.alloc(size * items.length);
  items.forEach((v, i) => write(b, Number(v), size * i));
  return b;
}

function scalarJson(type: GgufScalarType, v: GgufScalar): unknown {
  if (type === 'u64' || type === 'i64') return String(v);
  if (type === 'f32') return Math.fround(Number(v));
  return v;
}

/** Our value in the manifest's form. */
export function toManifestKv(key: string, v: GgufValue): ManifestKv {
  if (v.type === 'array') {
    const out: ManifestKv = { key, type: 'array', itemType: v.itemType, length: v.value.length };
    if (v.value.length <= INLINE_ITEMS) out.value = v.value.map((x) => scalarJson(v.itemType, x));
    else out.sha256 = createHash('sha256').update(encodeItems(v.itemType, v.value)).digest('hex');
    return out;
  }
  return { key, type: v.type, value: scalarJson(v.type, v.value) };
}

function same(a: ManifestKv, b: ManifestKv): boolean {
  const norm = (m: ManifestKv) => ({ ...m, value: m.type === 'f32' ? Math.fround(Number(m.value)) : m.itemType === 'f32' && Array.isArray(m.value) ? m.value.map((x) => Math.fround(Number(x))) : m.value });
  return JSON.stringify(norm(a)) === JSON.stringify(norm(b));
}

/**
 * Differences between our keys and the recorded ones, for the keys `include` selects: one message per key, naming
 * it (missing, extra, or both values).
 */
export function metadataDifferences(ours: Iterable<[string, GgufValue]>, expected: ManifestKv[], include: (key: string) => boolean): string[] {
  const want = new Map(expected.filter((m) => include(m.key)).map((m) => [m.key, m]));
  const got = new Map([...ours].filter(([k]) => include(k)).map(([k, v]) => [k, toManifestKv(k, v)]));
  const out: string[] = [];
  for (const [k, w] of want) {
    const g = got.get(k);
    if (!g) out.push(`key ${k}: missing (the converter writes ${JSON.stringify(w)})`);
    else if (!same(g, w)) out.push(`key ${k}: ${JSON.stringify(g)}, the converter writes ${JSON.stringify(w)}`);
  }
  for (const k of got.keys()) if (!want.has(k)) out.push(`key ${k}: written, but the converter does not write it`);
  return out;
}

/** Differences between a GGUF file's tensors and the recorded ones: names, order, shapes, types, bytes. */
export async function tensorDifferences(file: string, gguf: GgufFile, expected: ManifestTensor[]): Promise<string[]> {
  const out: string[] = [];
  const got = new Map(gguf.tensors.map((t) => [t.name, t]));
  for (const w of expected) {
    const t = got.get(w.name);
    if (!t) {
      out.push(`tensor ${w.name}: missing`);
      continue;
    }
    if (JSON.stringify(t.shape) !== JSON.stringify(w.shape)) out.push(`tensor ${w.name}: shape ${JSON.stringify(t.shape)}, the converter writes ${JSON.stringify(w.shape)}`);
    if (t.type !== w.type) out.push(`tensor ${w.name}: type ${t.type}, the converter writes ${w.type}`);
    else {
      const sha = createHash('sha256').update(await readTensorData(file, t)).digest('hex');
      if (sha !== w.sha256) out.push(`tensor ${w.name}: bytes differ (sha256 ${sha.slice(0, 12)}…, the converter's ${w.sha256.slice(0, 12)}…)`);
    }
  }
  const names = new Set(expected.map((w) => w.name));
  for (const t of gguf.tensors) if (!names.has(t.name)) out.push(`tensor ${t.name}: written, but the converter does not write it`);
  const order = gguf.tensors.map((t) => t.name).filter((n) => names.has(n));
  if (out.length === 0 && JSON.stringify(order) !== JSON.stringify(expected.map((w) => w.name))) out.push('tensor order differs from the converter\'s');
  return out;
}
