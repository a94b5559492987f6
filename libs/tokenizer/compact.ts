/**
 * A BPE tokenizer's vocabulary and merge ranks as flat arrays (one buffer, read without parsing), so that a command
 * that meets a prompt the ids memo lacks need not build the tokenizer from tokenizer.json: reading and parsing
 * Llama 3's 9 MB file and building its 280K merge ranks takes @huggingface/tokenizers ~1.2-1.5 s on a 2-core EPYC,
 * Llama 2's ~0.3 s, on the path of every edit that adds a prompt.
 *
 * The buffer is made from a tokenizer the library built (its BPE model's maps as they stand after its constructor,
 * added tokens included), and a tokenizer is made back from it by the library itself, from tokenizer.json without
 * its vocabulary and merges (normalizer, pre-tokenizer, added tokens and model options as they were), its model's
 * maps then replaced by lookups over the arrays that answer as the maps did. Encoding runs the library's own code.
 */
import type { Tokenizer } from '@huggingface/tokenizers';

/** Bump when the layout or what it holds changes (part of the cache entry's material). */
export const COMPACT_FORMAT = 1;

const MAGIC = 0x4b54464d; // 'MFTK'

/** What a compact tokenizer carries besides the arrays: enough to build the library's tokenizer again. */
export interface CompactHead {
  /** The tokenizer.json pipeline the tokenizer was built from, its model's vocab and merges emptied. */
  skeleton: Record<string, unknown>;
  /** tokenizer_config.json as read ({} when absent). */
  config: Record<string, unknown>;
  /** Anything else its maker keeps with it (the class, the special tokens). */
  extra: Record<string, unknown>;
}

interface Layout {
  format: number;
  /** Token strings (the token map's keys, in its order), their UTF-16 units. */
  n: number;
  units: number;
  tableCap: number;
  vocabLen: number;
  merges: number;
  /** The model's unk_token_id (null: undefined). */
  unk: number | null;
  /** Rank entries whose key is not two strings of the token map: kept as they are. */
  extras: [string, number][];
  head: CompactHead;
}

/** The fields of the library's BPE model that encoding reads and that the arrays stand in for. */
interface BpeModel {
  tokens_to_ids: Map<string, number>;
  vocab: (string | undefined)[];
  bpe_ranks: Map<string, number>;
  unk_token_id: number | undefined;
}

function bpeModel(tok: Tokenizer): BpeModel | null {
  const m = (tok as unknown as { model?: Partial<BpeModel> }).model;
  if (!m || !(m.tokens_to_ids instanceof Map) || !(m.bpe_ranks instanceof Map) || !Array.isArray(m.vocab)) return null;
  return m as BpeModel;
}

/** FNV-1a over UTF-16 units: the token table's hash (any string, lone surrogates included). */
function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The smallest power of two at least twice `n` (and above it: every probe meets an empty slot). */
const capacity = (n: number) => 2 ** Math.max(4, Math.ceil(Math.log2(2 * n + 1)));

/** A rank key's two token strings, or null when it is not the JSON of two strings. */
function pairOf(key: string): [string, string] | null {
  if (key.charCodeAt(0) !== 0x5b /* [ */) return null;
  let v: unknown;
  try {
    v = JSON.parse(key);
  } catch {
    return null;
  }
  return Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string' ? [v[0], v[1]] : null;
}

const align4 = (n: number) => (n + 3) & ~3;

/**
 * The compact form of a tokenizer the library built, or null where its model is not BPE (other models are built
 * from tokenizer.json as before). `head.skeleton` is the pipeline it was built from, vocab and merges emptied.
 */
export function compactTokenizer(tok: Tokenizer, head: CompactHead): Buffer | null {
  const model = bpeModel(tok);
  if (!model) return null;
  const tokens = [...model.tokens_to_ids];
  const n = tokens.length;
  let units = 0;
  for (const [s] of tokens) units += s.length;
  const offsets = new Int32Array(n + 1);
  const ids = new Int32Array(n);
  const unitArr = new Uint16Array(units);
  const tableCap = capacity(n);
  const table = new Int32Array(tableCap).fill(-1);
  const entryOf = new Map<string, number>();
  let at = 0;
  for (let e = 0; e < n; e++) {
    const [s, id] = tokens[e]!;
    if (!Number.isSafeInteger(id) || id < 0 || id > 0x7fffffff) return null; // not what the library makes
    offsets[e] = at;
    for (let i = 0; i < s.length; i++) unitArr[at + i] = s.charCodeAt(i);
    at += s.length;
    ids[e] = id;
    entryOf.set(s, e);
    let slot = hashString(s) & (tableCap - 1);
    while (table[slot] !== -1) slot = (slot + 1) & (tableCap - 1);
    table[slot] = e;
  }
  offsets[n] = at;
  // vocab: id -> the entry whose string it holds (-1: a hole).
  const vocabLen = model.vocab.length;
  const vocab = new Int32Array(vocabLen).fill(-1);
  for (let id = 0; id < vocabLen; id++) {
    const s = model.vocab[id];
    if (s === undefined) continue;
    const e = entryOf.get(s);
    if (e === undefined) return null; // not what the library's constructor leaves: nothing to stand in for
    vocab[id] = e;
  }
  // Ranks by their pair's first entry (pairStart[a] .. pairStart[a + 1]), each group by its second entry: a lookup
  // is a binary search in its group, and the arrays hold 2 numbers a merge. Taken from the merges list the ranks
  // were made from (the library's map is each pair's JSON -> its index there, a later repeat winning), bucketed by
  // first entry: parsing 280K keys back and sorting them took Llama 3's ~0.85 s. Checked against the map's size.
  const list = (model as { merges?: unknown }).merges;
  if (!Array.isArray(list)) return null;
  const firstOf = new Int32Array(list.length).fill(-1);
  const secondOf = new Int32Array(list.length);
  const bucket = new Int32Array(n + 1);
  const kept = new Map<string, number>(); // merges that are not two strings of the token map
  for (let i = 0; i < list.length; i++) {
    const x = list[i] as unknown;
    const two = Array.isArray(x) && x.length === 2 && typeof x[0] === 'string' && typeof x[1] === 'string';
    const a = two ? entryOf.get(x[0] as string) : undefined;
    const b = two && a !== undefined ? entryOf.get(x[1] as string) : undefined;
    if (a === undefined || b === undefined) kept.set(JSON.stringify(x), i);
    else (firstOf[i] = a), (secondOf[i] = b), bucket[a + 1]!++;
  }
  for (let e = 0; e < n; e++) bucket[e + 1]! += bucket[e]!;
  const order = new Int32Array(bucket[n]!);
  const fill = bucket.slice(0, n);
  for (let i = 0; i < list.length; i++) if (firstOf[i]! >= 0) order[fill[firstOf[i]!]!++] = i;
  // Each group by second entry (ties in list order); of a pair listed twice the last index is its rank.
  const secondAll = new Int32Array(order.length);
  const rankAll = new Int32Array(order.length);
  const pairStart = new Int32Array(n + 1);
  let merges = 0;
  for (let a = 0; a < n; a++) {
    pairStart[a] = merges;
    const group = order.subarray(bucket[a]!, bucket[a + 1]!);
    if (group.length > 1) group.sort((x, y) => secondOf[x]! - secondOf[y]! || x - y);
    for (let g = 0; g < group.length; g++) {
      const i = group[g]!;
      if (g + 1 < group.length && secondOf[group[g + 1]!] === secondOf[i]) continue;
      secondAll[merges] = secondOf[i]!;
      rankAll[merges++] = i;
    }
  }
  pairStart[n] = merges;
  const second = secondAll.subarray(0, merges), rankOf = rankAll.subarray(0, merges);
  const extras = [...kept];
  if (merges + extras.length !== model.bpe_ranks.size) return null; // not the map these merges make
  const unk = model.unk_token_id;
  if (unk !== undefined && !Number.isSafeInteger(unk)) return null;
  const layout: Layout = { format: COMPACT_FORMAT, n, units, tableCap, vocabLen, merges, unk: unk ?? null, extras, head };
  const json = Buffer.from(JSON.stringify(layout), 'utf8');
  const sections: ArrayBufferView[] = [offsets, ids, table, vocab, pairStart, second, rankOf, unitArr];
  const out = Buffer.alloc(8 + align4(json.length) + sections.reduce((s, a) => s + align4(a.byteLength), 0));
  out.writeUInt32LE(MAGIC, 0);
  out.writeUInt32LE(json.length, 4);
  json.copy(out, 8);
  let pos = 8 + align4(json.length);
  for (const a of sections) {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), pos);
    pos += align4(a.byteLength);
  }
  return out;
}

/** The arrays of a compact tokenizer, checked to be in bounds (a cache entry is an input). */
interface Arrays {
  offsets: Int32Array;
  ids: Int32Array;
  table: Int32Array;
  vocab: Int32Array;
  pairStart: Int32Array;
  second: Int32Array;
  rank: Int32Array;
  units: Uint16Array;
}

const isCount = (x: unknown, max = 0x7fffffff): x is number => Number.isSafeInteger(x) && (x as number) >= 0 && (x as number) <= max;
const isPow2 = (x: number) => x > 0 && (x & (x - 1)) === 0;

function readLayout(buf: Buffer): { layout: Layout; arrays: Arrays } | null {
  if (buf.length < 8 || buf.readUInt32LE(0) !== MAGIC) return null;
  const jsonLen = buf.readUInt32LE(4);
  if (8 + jsonLen > buf.length) return null;
  let layout: Layout;
  try {
    layout = JSON.parse(buf.toString('utf8', 8, 8 + jsonLen)) as Layout;
  } catch {
    return null;
  }
  const l = layout;
  if (!l || typeof l !== 'object' || l.format !== COMPACT_FORMAT) return null;
  if (!isCount(l.n) || !isCount(l.units) || !isCount(l.tableCap) || !isCount(l.vocabLen) || !isCount(l.merges)) return null;
  if (!isPow2(l.tableCap) || l.tableCap <= l.n) return null;
  if (l.unk !== null && !Number.isSafeInteger(l.unk)) return null;
  if (!Array.isArray(l.extras) || !l.extras.every((x) => Array.isArray(x) && x.length === 2 && typeof x[0] === 'string' && typeof x[1] === 'number')) return null;
  const h = l.head;
  if (!h || typeof h !== 'object' || !isObject(h.skeleton) || !isObject(h.config) || !isObject(h.extra) || !isObject(h.skeleton.model)) return null;
  const sizes: [number, 'i32' | 'u16'][] = [[l.n + 1, 'i32'], [l.n, 'i32'], [l.tableCap, 'i32'], [l.vocabLen, 'i32'], [l.n + 1, 'i32'], [l.merges, 'i32'], [l.merges, 'i32'], [l.units, 'u16']];
  let pos = 8 + align4(jsonLen);
  const need = pos + sizes.reduce((s, [c, t]) => s + align4(c * (t === 'i32' ? 4 : 2)), 0);
  if (need !== buf.length) return null;
  // Typed views need the buffer's offset aligned: a copy where it is not.
  const b = (buf.byteOffset & 3) === 0 ? buf : Buffer.from(buf);
  const views = sizes.map(([c, t]) => {
    const v = t === 'i32' ? new Int32Array(b.buffer, b.byteOffset + pos, c) : new Uint16Array(b.buffer, b.byteOffset + pos, c);
    pos += align4(c * (t === 'i32' ? 4 : 2));
    return v;
  });
  const [offsets, ids, table, vocab, pairStart, second, rank, units] = views as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Uint16Array];
  const arrays = { offsets, ids, table, vocab, pairStart, second, rank, units };
  return wellFormed(arrays, l.n, l.units, l.merges) ? { layout: l, arrays } : null;
}

const isObject = (x: unknown): x is Record<string, unknown> => x !== null && typeof x === 'object' && !Array.isArray(x);

/**
 * Every index the lookups follow stays inside its array, and each group of pairs ascends (the binary search's
 * premise). Plain loops in one function: run once per command, over ~1M numbers for Llama 3's (callbacks per number
 * took ~20 ms before the compiler caught up).
 */
function wellFormed(a: Arrays, n: number, units: number, merges: number): boolean {
  const { offsets, ids, table, vocab, pairStart, second, rank } = a;
  if (offsets[0] !== 0 || offsets[n] !== units || pairStart[0] !== 0 || pairStart[n] !== merges) return false;
  for (let e = 0; e < n; e++) {
    if (offsets[e + 1]! < offsets[e]! || ids[e]! < 0 || pairStart[e + 1]! < pairStart[e]!) return false;
  }
  for (let e = 0, i = 0; e < n; e++) {
    const end = pairStart[e + 1]!;
    for (let last = -1; i < end; i++) {
      const b = second[i]!;
      if (b <= last || b >= n || rank[i]! < 0) return false;
      last = b;
    }
  }
  for (let i = 0; i < table.length; i++) if (table[i]! < -1 || table[i]! >= n) return false;
  for (let i = 0; i < vocab.length; i++) if (vocab[i]! < -1 || vocab[i]! >= n) return false;
  return true;
}

/** The token map's lookups over the arrays: the entry of a string, its id. */
class TokenTable {
  constructor(private readonly a: Arrays) {}

  entry(s: string): number {
    const { table, offsets, units } = this.a;
    const mask = table.length - 1;
    for (let slot = hashString(s) & mask, probes = 0; probes < table.length; slot = (slot + 1) & mask, probes++) {
      const e = table[slot]!;
      if (e === -1) return -1;
      const o = offsets[e]!;
      if (offsets[e + 1]! - o !== s.length) continue;
      let i = 0;
      while (i < s.length && units[o + i] === s.charCodeAt(i)) i++;
      if (i === s.length) return e;
    }
    return -1;
  }

  text(e: number): string {
    const { offsets, units } = this.a;
    let s = '';
    for (let o = offsets[e]!, end = offsets[e + 1]!; o < end; o += 4096) s += String.fromCharCode(...units.subarray(o, Math.min(end, o + 4096)));
    return s;
  }

  /** The map as the library held it (its order): for what reads it whole. */
  toMap(): Map<string, number> {
    const m = new Map<string, number>();
    for (let e = 0; e + 1 < this.a.offsets.length; e++) m.set(this.text(e), this.a.ids[e]!);
    return m;
  }
}

/**
 * A Map<string, number> whose reads go to a lookup until something writes to it or reads it whole: then it is
 * made a real Map (the library's own code may do either; encoding only gets and tests keys).
 */
class LazyMap extends Map<string, number> {
  private whole: Map<string, number> | null = null;

  constructor(private readonly lookup: (k: string) => number | undefined, private readonly make: () => Map<string, number>) {
    super();
  }

  private real(): Map<string, number> {
    return (this.whole ??= this.make());
  }

  override get(k: string): number | undefined {
    return this.whole ? this.whole.get(k) : this.lookup(k);
  }

  override has(k: string): boolean {
    return this.get(k) !== undefined;
  }

  override set(k: string, v: number): this {
    this.real().set(k, v);
    return this;
  }

  override delete(k: string): boolean {
    return this.real().delete(k);
  }

  override clear(): void {
    this.real().clear();
  }

  override get size(): number {
    return this.real().size;
  }

  override forEach(cb: (v: number, k: string, m: Map<string, number>) => void, thisArg?: unknown): void {
    this.real().forEach((v, k) => cb.call(thisArg, v, k, this));
  }

  override entries(): MapIterator<[string, number]> {
    return this.real().entries();
  }

  override keys(): MapIterator<string> {
    return this.real().keys();
  }

  override values(): MapIterator<number> {
    return this.real().values();
  }

  override [Symbol.iterator](): MapIterator<[string, number]> {
    return this.real()[Symbol.iterator]();
  }
}

/** Built from compact forms in this process (tests read this). */
export const compactStats = { loaded: 0, refused: 0 };

/**
 * The library's tokenizer from a compact form, and what its maker kept with it; null where the buffer is not a
 * well-formed compact tokenizer of this format, or the library does not build a BPE model the same way (the
 * caller then builds it from tokenizer.json).
 */
export function tokenizerFromCompact(buf: Buffer, build: (json: Record<string, unknown>, config: Record<string, unknown>) => Tokenizer): { tokenizer: Tokenizer; head: CompactHead } | null {
  const read = readLayout(buf);
  if (!read) {
    compactStats.refused++;
    return null;
  }
  const { layout, arrays } = read;
  let tokenizer: Tokenizer;
  try {
    tokenizer = build(layout.head.skeleton, layout.head.config);
  } catch {
    compactStats.refused++;
    return null;
  }
  const model = bpeModel(tokenizer);
  if (!model) {
    compactStats.refused++;
    return null;
  }
  const tokens = new TokenTable(arrays);
  const idOf = (s: string) => {
    const e = tokens.entry(s);
    return e < 0 ? undefined : arrays.ids[e];
  };
  const extras = new Map(layout.extras);
  const rankOf = (key: string) => {
    const x = extras.get(key);
    if (x !== undefined) return x;
    const p = pairOf(key);
    if (!p) return undefined;
    const a = tokens.entry(p[0]);
    const b = a < 0 ? -1 : tokens.entry(p[1]);
    if (b < 0) return undefined;
    const { pairStart, second, rank } = arrays;
    let lo = pairStart[a]!, hi = pairStart[a + 1]!;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const x = second[mid]!;
      if (x === b) return rank[mid];
      if (x < b) lo = mid + 1;
      else hi = mid;
    }
    return undefined;
  };
  model.tokens_to_ids = new LazyMap(idOf, () => tokens.toMap());
  model.bpe_ranks = new LazyMap(rankOf, () => {
    // In rank order: the library's where the merges list names no pair twice.
    const all: [string, number][] = [...layout.extras];
    for (let a = 0; a < layout.n; a++) {
      for (let i = arrays.pairStart[a]!; i < arrays.pairStart[a + 1]!; i++) all.push([JSON.stringify([tokens.text(a), tokens.text(arrays.second[i]!)]), arrays.rank[i]!]);
    }
    return new Map(all.sort((x, y) => x[1] - y[1]));
  });
  model.unk_token_id = layout.unk ?? undefined;
  // id -> token, made when something reads it (decoding, id_to_token): encoding does not.
  let vocab: (string | undefined)[] | null = null;
  Object.defineProperty(model, 'vocab', {
    configurable: true,
    enumerable: true,
    get: () => (vocab ??= Array.from(arrays.vocab, (e) => (e < 0 ? undefined : tokens.text(e)))),
    set: (v: (string | undefined)[]) => void (vocab = v),
  });
  compactStats.loaded++;
  return { tokenizer, head: layout.head };
}
