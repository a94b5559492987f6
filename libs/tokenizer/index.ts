import { readFile } from 'node:fs/promises';
import { modelJson, readInputText, stripBom } from '../input';
import { existsSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import type { Tokenizer } from '@huggingface/tokenizers';
import { ModelError } from '../errors';
import { fileKey, isRacy, nowNs } from '../util';
import { COMPACT_FORMAT, compactTokenizer, tokenizerFromCompact } from './compact';
export { compactStats } from './compact';

/** Files that make up a Hugging Face tokenizer, copied to the output when present. */
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model', 'added_tokens.json', 'vocab.json', 'merges.txt'];

export interface PromptTokenizer {
  dir: string;
  bosToken: string | null;
  eosToken: string | null;
  /** The id used for left padding by the reference: BOS, else EOS. */
  padTokenId: number;
  padToken: string;
  /** sha256 over the tokenizer files, so cached prompt states follow tokenizer content, not paths. */
  contentId: string;
  /**
   * The reference's tokenisation, as transformers 5's AutoTokenizer gives it: the string `bos_token + prompt`,
   * without special tokens added.
   */
  encodePrompt(prompt: string): number[];
}

function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

async function readJson(file: string): Promise<Record<string, unknown>> {
  const text = await readInputText(file, modelJson(basename(file)));
  try {
    return JSON.parse(stripBom(text));
  } catch (e) {
    throw new ModelError('bad_tokenizer', `not valid JSON (${(e as Error).message})`, { file });
  }
}

/** Bump when encodePrompt changes for some tokenizer files (it is part of contentId). */
const PIPELINE_VERSION = 'transformers5-v2';

/** Python class defaults of the special tokens, for a tokenizer_config.json that does not name them. */
interface ClassDefaults {
  bos: string | null;
  eos: string | null;
}

/**
 * The tokenizer class transformers 5.17's AutoTokenizer picks for a model folder (tokenization_auto.py), for
 * the model types we read and write: the class registered for config.json's model_type (none for llama, the generic
 * backend for mistral, Qwen2Tokenizer for qwen2/qwen3) wins over tokenizer_config.json's `tokenizer_class`
 * when they differ, except that qwen3 trusts the file and a generic registered class means the generic backend.
 */
export function transformers5Class(modelType: string | null, tokenizerClass: string | null): string {
  const REGISTERED: Record<string, string> = { mistral: 'TokenizersBackend', mixtral: 'TokenizersBackend', qwen2: 'Qwen2Tokenizer', qwen3: 'Qwen2Tokenizer', qwen2_moe: 'Qwen2Tokenizer', qwen3_moe: 'Qwen2Tokenizer' };
  const named = tokenizerClass?.replace(/Fast$/, '') ?? null;
  const hub = named === 'PreTrainedTokenizer' || named === 'PythonBackend' ? 'TokenizersBackend' : named;
  const registered = modelType ? REGISTERED[modelType] : undefined;
  if (registered && hub && hub !== registered) {
    if (registered === 'TokenizersBackend') return 'TokenizersBackend';
    // qwen2 is in transformers' list of model types whose Hub tokenizer_class is wrong.
    return modelType === 'qwen2' ? registered : hub;
  }
  return hub ?? registered ?? 'TokenizersBackend';
}

/** A BPE model with the vocabulary and merges of tokenizer.json and the options a Python class sets. */
function bpe(model: Record<string, unknown>, options: Record<string, unknown>): Record<string, unknown> {
  return { type: 'BPE', vocab: model.vocab, merges: model.merges, dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, ...options };
}

/** Qwen2Tokenizer's split pattern (tokenization_qwen2.py). */
const QWEN2_PATTERN = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/**
 * Tokenizer classes that transformers 5 builds from their own definition, taking only the vocabulary, merges and
 * added tokens from tokenizer.json (TokenizersBackend.convert_to_native_format, for a class with its own
 * __init__): tokenizer.json's normalizer and pre-tokenizer are not what their text goes through. Returns the
 * tokenizer.json that describes the pipeline transformers 5 runs, and the class's special-token defaults.
 */
function transformers5Pipeline(cls: string, tokenizerJson: Record<string, unknown>, config: Record<string, unknown>): { json: Record<string, unknown>; defaults: ClassDefaults } {
  const model = tokenizerJson.model as Record<string, unknown> | undefined;
  if (model?.type !== 'BPE') return { json: tokenizerJson, defaults: { bos: null, eos: null } };
  const metaspace = (prependScheme: 'always' | 'first' | 'never', options: Record<string, unknown>) => ({
    json: {
      ...tokenizerJson,
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: prependScheme, split: false },
      model: bpe(model, { fuse_unk: true, byte_fallback: true, ...options }),
    },
    defaults: { bos: '<s>', eos: '</s>' },
  });
  const prefix = config.add_prefix_space !== false;
  // LlamaTokenizer (Llama-2, Mistral-7B vocabularies): no normalizer; a Metaspace that prepends to every section
  // with `legacy: true`, else only at the text's start, and never with `add_prefix_space: false`.
  if (cls === 'LlamaTokenizer') return metaspace(!prefix ? 'never' : config.legacy === true ? 'always' : 'first', {});
  if (cls === 'CodeLlamaTokenizer') return metaspace(prefix ? 'first' : 'never', { unk_token: typeof config.unk_token === 'string' ? config.unk_token : '<unk>' });
  if (cls === 'Qwen2Tokenizer') {
    return {
      json: {
        ...tokenizerJson,
        normalizer: { type: 'NFC' },
        pre_tokenizer: {
          type: 'Sequence',
          pretokenizers: [
            { type: 'Split', pattern: { Regex: QWEN2_PATTERN }, behavior: 'Isolated', invert: false },
            { type: 'ByteLevel', add_prefix_space: config.add_prefix_space === true, trim_offsets: false, use_regex: false },
          ],
        },
        model: bpe(model, { continuing_subword_prefix: '', end_of_word_suffix: '' }),
      },
      defaults: { bos: null, eos: '<|endoftext|>' },
    };
  }
  return { json: tokenizerJson, defaults: { bos: null, eos: null } };
}

/** A special token as transformers 5 resolves it: the config's (null included), else special_tokens_map.json's, else the class default. */
function specialToken(key: 'bos_token' | 'eos_token', config: Record<string, unknown>, stm: Record<string, unknown>, fallback: string | null): string | null {
  if (key in config) return tokenText(config[key]);
  if (key in stm) return tokenText(stm[key]);
  return fallback;
}

async function readModelType(file: string): Promise<string | null> {
  if (!existsSync(file)) return null;
  const cfg = await readJson(file);
  return typeof cfg.model_type === 'string' ? cfg.model_type : null;
}

/** A folder's tokenizer as transformers 5's AutoTokenizer builds it, for callers that need more than prompts. */
export interface TransformersTokenizer {
  tokenizer: Tokenizer;
  /** The Python class transformers 5 picks (see transformers5Class). */
  cls: string;
  /** tokenizer.json as read, and the pipeline transformers 5 runs (the class may replace its pre-tokenizer). */
  tokenizerJson: Record<string, unknown>;
  pipelineJson: Record<string, unknown>;
  /** tokenizer_config.json and special_tokens_map.json ({} when absent). */
  config: Record<string, unknown>;
  specialTokensMap: Record<string, unknown>;
  bosToken: string | null;
  eosToken: string | null;
  /** Another pipeline (a tokenizer.json object) built by the same library with the same config. */
  withPipeline(json: Record<string, unknown>): Tokenizer;
}

/** A folder's tokenizer_config.json and the class transformers 5 picks for it, which depends on the model folder's config.json too (a bare tokenizer folder has none). */
async function tokenizerClass(dir: string): Promise<{ config: Record<string, unknown>; cls: string }> {
  const cfgFile = join(dir, 'tokenizer_config.json');
  const config = existsSync(cfgFile) ? await readJson(cfgFile) : {};
  const modelType = await readModelType(join(dir, 'config.json'));
  return { config, cls: transformers5Class(modelType, typeof config.tokenizer_class === 'string' ? config.tokenizer_class : null) };
}

/** @huggingface/tokenizers' tokenizer for a tokenizer.json object and tokenizer_config.json. */
function libraryTokenizer(json: Record<string, unknown>, config: Record<string, unknown>): Tokenizer {
  return new (require('@huggingface/tokenizers') as typeof import('@huggingface/tokenizers')).Tokenizer(json, config);
}

export async function loadTransformersTokenizer(dir: string): Promise<TransformersTokenizer> {
  const tjFile = join(dir, 'tokenizer.json');
  if (!existsSync(tjFile)) {
    throw new ModelError('missing_tokenizer', 'the base model has no tokenizer.json (a fast tokenizer is needed to tokenize prompts)', { file: tjFile });
  }
  const tokenizerJson = await readJson(tjFile);
  const { config, cls } = await tokenizerClass(dir);
  const stmFile = join(dir, 'special_tokens_map.json');
  const stm = existsSync(stmFile) ? await readJson(stmFile) : {};
  const pipeline = transformers5Pipeline(cls, tokenizerJson, config);
  const bosToken = specialToken('bos_token', config, stm, pipeline.defaults.bos);
  const eosToken = specialToken('eos_token', config, stm, pipeline.defaults.eos);
  const withPipeline = (json: Record<string, unknown>): Tokenizer => {
    try {
      return libraryTokenizer(json, config);
    } catch (e) {
      throw new ModelError('bad_tokenizer', `cannot load tokenizer (${(e as Error).message})`, { file: tjFile });
    }
  };
  return { tokenizer: withPipeline(pipeline.json), cls, tokenizerJson, pipelineJson: pipeline.json, config, specialTokensMap: stm, bosToken, eosToken, withPipeline };
}

/**
 * Tokenizers this process loaded, by folder, with the stat keys of its tokenizer files then (null: absent): a
 * merge asks for the base's at several stages (the command's early pass, embed-prompts, the report), and a real
 * tokenizer.json takes ~0.2 s to load. Only files outside the racy window are vouched for (as the content-id memo).
 */
const loaded = new Map<string, { keys: (string | null)[]; tokenizer: PromptTokenizer }>();

/** The stat keys of a folder's tokenizer files, or null when one is racy (just written: not to be vouched for). */
function tokenizerKeys(dir: string): (string | null)[] | null {
  const at = nowNs();
  const keys = TOKENIZER_FILES.map((f) => fileKey(join(dir, f)));
  return keys.some((k) => k !== null && isRacy(k, at)) ? null : keys;
}

/**
 * The folder's prompt tokenizer: the one this process loaded while its files are unchanged, else from the compact
 * form `memo` keeps for its content (known: its content id, computed by the caller), else built from tokenizer.json
 * (its compact form then kept in `memo`).
 */
export async function loadTokenizer(dir: string, memo?: IdsMemo, known?: TokenizerId): Promise<PromptTokenizer> {
  const keys = tokenizerKeys(dir);
  const seen = loaded.get(dir);
  if (keys && seen && seen.keys.every((k, i) => k === keys[i])) return seen.tokenizer;
  const tokenizer = await readTokenizer(dir, memo, known);
  // Kept only when no file changed while it was read.
  const after = tokenizerKeys(dir);
  if (keys && after && after.every((k, i) => k === keys[i])) loaded.set(dir, { keys, tokenizer });
  else loaded.delete(dir);
  return tokenizer;
}

/**
 * sha256 over the tokenizer files, with the pipeline's version and the class transformers picks: cached prompt
 * states made with another tokenisation of the same files must miss.
 */
async function contentIdOf(dir: string, cls: string): Promise<string> {
  tokenizerStats.hashed++;
  const h = createHash('sha256').update(`${PIPELINE_VERSION}\0${cls}\0`);
  for (const f of TOKENIZER_FILES) {
    const p = join(dir, f);
    if (existsSync(p)) h.update(f).update('\0').update(await readFile(p)).update('\0');
  }
  return h.digest('hex');
}

/**
 * contentIdOf, remembered in `memo` under the folder, its tokenizer files' stat keys and the class: reading and
 * hashing Llama 3's 9 MB tokenizer.json took 20-30 ms of every command that needs prompt ids. Files written within
 * the racy window are hashed and not remembered (as the content-id memo of the weights).
 */
async function memoContentId(dir: string, cls: string, memo: IdsMemo): Promise<string> {
  const keys = tokenizerKeys(dir);
  if (!keys) return contentIdOf(dir, cls);
  const material = { mode: 'tokenizer-content-id', dir: resolve(dir), keys, cls, pipeline: PIPELINE_VERSION };
  const key = `tokenizer-content-id:${createHash('sha256').update(JSON.stringify(material)).digest('hex')}`;
  const hit = (await memo.get(key, material).catch(() => null)) as { contentId?: unknown } | null;
  if (hit && typeof hit.contentId === 'string' && /^[0-9a-f]{64}$/.test(hit.contentId)) return hit.contentId;
  const id = await contentIdOf(dir, cls);
  // Remembered only when no file changed while it was read.
  const after = tokenizerKeys(dir);
  if (after && after.every((k, i) => k === keys[i])) await memo.put(key, material, { contentId: id }).catch(() => undefined);
  return id;
}

/** Tokenizers built in this process, and tokenizer content ids hashed (tests read this). */
export const tokenizerStats = { built: 0, hashed: 0 };

/** Forgets the tokenizers this process loaded (tests: the next load reads the files again). */
export function forgetLoadedTokenizers(): void {
  loaded.clear();
}

/** Where prompt ids are remembered between processes (the stages give the prompt-state cache): JSON by key, bound to material. */
export interface IdsMemo {
  get(key: string, material: unknown): Promise<unknown>;
  put(key: string, material: unknown, value: unknown): Promise<void>;
  /** Bytes by key, bound to material (the compact tokenizer); at most `maxBytes`. */
  getBytes?(key: string, material: unknown, maxBytes: number): Promise<Buffer | null>;
  /** `data` is called when the entry is written (a caller may put it off: making it takes CPU); null writes nothing. */
  putBytes?(key: string, material: unknown, data: () => Buffer | null): Promise<void>;
}

/** A tokenizer folder's content id and the class transformers 5 picks for it. */
export interface TokenizerId {
  contentId: string;
  cls: string;
}

/** The largest compact tokenizer read back (Llama 3's is ~9 MB). */
const COMPACT_MAX_BYTES = 256 << 20;

// Set by scripts/build.mjs: the version bundled with the command (from sources, read from its package.json).
declare const __TOKENIZERS_VERSION__: string | undefined;
let version: string | undefined;

/** @huggingface/tokenizers' version: a compact form holds its model's maps as that version builds them. */
function libraryVersion(): string {
  if (typeof __TOKENIZERS_VERSION__ === 'string') return __TOKENIZERS_VERSION__;
  return (version ??= versionFromPackage());
}

function versionFromPackage(): string {
  try {
    const pkg = JSON.parse(require('node:fs').readFileSync(join(dirname(require.resolve('@huggingface/tokenizers')), '..', 'package.json'), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

const compactKey = (contentId: string) => `tokenizer-compact:${contentId}`;
const compactMaterial = (contentId: string) => ({ mode: 'tokenizer-compact', tokenizer: contentId, format: COMPACT_FORMAT, library: libraryVersion() });

/** The prompt tokenizer from the compact form `memo` keeps for this content id, or null (none, or not usable). */
async function compactFromMemo(dir: string, id: TokenizerId, memo: IdsMemo): Promise<PromptTokenizer | null> {
  const data = await memo.getBytes!(compactKey(id.contentId), compactMaterial(id.contentId), COMPACT_MAX_BYTES);
  if (!data) return null;
  const got = tokenizerFromCompact(data, libraryTokenizer);
  if (!got) return null;
  const { bosToken, eosToken, cls } = got.head.extra;
  const textOrNull = (x: unknown): x is string | null => x === null || typeof x === 'string';
  if (!textOrNull(bosToken) || !textOrNull(eosToken) || cls !== id.cls) return null;
  try {
    return promptTokenizer(dir, got.tokenizer, bosToken, eosToken, id.contentId);
  } catch {
    return null; // not a pad token it has: built from the files, which say what is wrong
  }
}

/** What the forward pass and the prompt-state cache need of a tokenizer for some texts. */
export interface PromptIds {
  ids: number[][];
  contentId: string;
  padTokenId: number;
}

const isId = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;

/**
 * encodePrompt's ids of `texts`, and the tokenizer's content id and pad id: from `memo` where it holds every one of
 * them for the tokenizer's content as it is now (the tokenizer is then not built: 0.3 s for Llama 2's, 1.2 s for
 * Llama 3's on a 2-core EPYC), else from the tokenizer, the memo filled. A memo entry that is not well-formed ids
 * bound to this content and text reads as a miss.
 */
export async function promptIds(dir: string, texts: string[], memo?: IdsMemo): Promise<PromptIds> {
  const keys = tokenizerKeys(dir);
  const seen = loaded.get(dir);
  const inProcess = keys && seen && seen.keys.every((k, i) => k === keys[i]) ? seen.tokenizer : null;
  // Built in this process already (the command's early look at the prompts): no memo to read or fill.
  const held = !inProcess && memo ? await fromMemo(dir, texts, memo).catch(() => null) : null;
  if (held && held.padTokenId !== null && held.ids.every((x) => x !== null)) return { ids: held.ids as number[][], contentId: held.contentId, padTokenId: held.padTokenId };
  const tok = inProcess ?? (await loadTokenizer(dir, memo, held ? { contentId: held.contentId, cls: held.cls } : undefined));
  const ids = texts.map((t) => tok.encodePrompt(t));
  // What the memo lacked, for this content (cacache appends an index line per put: what it holds is not put again).
  if (memo && held && held.contentId === tok.contentId) {
    await Promise.all([
      held.padTokenId === null ? memo.put(`tokenizer:${tok.contentId}`, { mode: 'tokenizer', tokenizer: tok.contentId }, { padTokenId: tok.padTokenId }) : null,
      ...texts.map((t, i) => (held.ids[i] === null ? memo.put(idsKey(tok.contentId, t), idsMaterial(tok.contentId, t), { ids: ids[i] }) : null)),
    ]).catch(() => undefined); // only a head start for the next command
  }
  return { ids, contentId: tok.contentId, padTokenId: tok.padTokenId };
}

const textHash = (t: string) => createHash('sha256').update(t).digest('hex');
const idsKey = (contentId: string, text: string) => `prompt-ids:${createHash('sha256').update(`${contentId}\0${text}`).digest('hex')}`;
const idsMaterial = (contentId: string, text: string) => ({ mode: 'prompt-ids', tokenizer: contentId, text: textHash(text) });

/**
 * The tokenizer's content id as it is now, and what the memo holds for it: the pad id and each text's ids (null
 * where it holds none, or nothing well-formed). Null for a tokenizer folder that cannot be read (the load says why).
 */
async function fromMemo(dir: string, texts: string[], memo: IdsMemo): Promise<{ contentId: string; cls: string; padTokenId: number | null; ids: (number[] | null)[] } | null> {
  if (!existsSync(join(dir, 'tokenizer.json'))) return null;
  const { cls } = await tokenizerClass(dir);
  const contentId = await memoContentId(dir, cls, memo);
  const head = (await memo.get(`tokenizer:${contentId}`, { mode: 'tokenizer', tokenizer: contentId })) as { padTokenId?: unknown } | null;
  const entries = (await Promise.all(texts.map((t) => memo.get(idsKey(contentId, t), idsMaterial(contentId, t))))) as ({ ids?: unknown } | null)[];
  const ok = (e: { ids?: unknown } | null) => e !== null && typeof e === 'object' && Array.isArray(e.ids) && e.ids.length > 0 && e.ids.every(isId);
  return { contentId, cls, padTokenId: head && isId(head.padTokenId) ? head.padTokenId : null, ids: entries.map((e) => (ok(e) ? (e!.ids as number[]) : null)) };
}

async function readTokenizer(dir: string, memo?: IdsMemo, known?: TokenizerId): Promise<PromptTokenizer> {
  if (known && memo?.getBytes) {
    const fast = await compactFromMemo(dir, known, memo).catch(() => null);
    if (fast) return fast;
  }
  const full = await loadTransformersTokenizer(dir);
  const { tokenizer: tok, cls, bosToken, eosToken } = full;
  const prompt = promptTokenizer(dir, tok, bosToken, eosToken, await contentIdOf(dir, cls));
  tokenizerStats.built++;
  if (memo?.putBytes) {
    // Kept for the next command that meets a new prompt: the pipeline without its vocabulary and merges, which the
    // compact form holds as arrays.
    const model = full.pipelineJson.model as Record<string, unknown> | undefined;
    const skeleton = { ...full.pipelineJson, model: { ...model, vocab: {}, merges: [] } };
    const head = { skeleton, config: full.config, extra: { cls, bosToken, eosToken } };
    await memo.putBytes(compactKey(prompt.contentId), compactMaterial(prompt.contentId), () => (model?.type === 'BPE' ? compactTokenizer(tok, head) : null)).catch(() => undefined);
  }
  return prompt;
}

/** What the prompts take of a built tokenizer: its pad token (BOS, else EOS) and the reference's encoding. */
function promptTokenizer(dir: string, tok: Tokenizer, bosToken: string | null, eosToken: string | null, contentId: string): PromptTokenizer {
  const tjFile = join(dir, 'tokenizer.json');
  const cfgFile = join(dir, 'tokenizer_config.json');
  const padToken = bosToken ?? eosToken;
  if (padToken === null) {
    throw new ModelError('no_pad_token', 'tokenizer has neither a BOS nor an EOS token, so prompts cannot be padded as the reference does', { file: cfgFile });
  }
  const padTokenId = tok.token_to_id(padToken);
  if (padTokenId === undefined) throw new ModelError('bad_tokenizer', `special token ${JSON.stringify(padToken)} is not in the vocabulary`, { file: tjFile });
  return {
    dir,
    bosToken,
    eosToken,
    padToken,
    padTokenId,
    contentId,
    encodePrompt(prompt: string): number[] {
      return tok.encode((bosToken ?? '') + prompt, { add_special_tokens: false }).ids;
    },
  };
}
