// The tokenizer keys of a GGUF (tokenizer.ggml.*, tokenizer.chat_template), as llama.cpp's converter
// (convert_hf_to_gguf.py with gguf-py's SpecialVocab) writes them for the model folders we output. Facts from its
// source: which vocabulary reader each architecture uses, how token types and scores are derived, where the special
// ids and add-bos/eos flags come from, and in which order the keys are added.
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ModelError } from '../errors';
import { modelJson, readInputText, stripBom } from '../input';
import { loadTransformersTokenizer, type TransformersTokenizer } from '../tokenizer';
import { choosePreTokenizer } from './pre-tokenizer';
import { readSentencePieceModel } from './sentencepiece';
import type { GgufKv, GgufScalarType, GgufValue } from './types';

/** gguf-py's TokenType (and SentencePiece's piece types, which share the numbers). */
export const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

const SPECIAL_TYPES = ['bos', 'eos', 'unk', 'sep', 'pad', 'cls', 'mask'] as const;

type Json = Record<string, unknown>;

async function readJsonIf(file: string): Promise<Json | null> {
  if (!existsSync(file)) return null;
  const text = await readInputText(file, modelJson(basename(file)));
  try {
    const v = JSON.parse(stripBom(text));
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Json;
  } catch (e) {
    throw new ModelError('bad_tokenizer', `not a valid JSON object (${(e as Error).message})`, { file });
  }
}

const str = (value: string): GgufValue => ({ type: 'string', value });
const u32 = (value: number): GgufValue => ({ type: 'u32', value });
const bool = (value: boolean): GgufValue => ({ type: 'bool', value });
const arr = (itemType: GgufScalarType, value: (string | number)[]): GgufValue => ({ type: 'array', itemType, value });

/** TextModel.does_token_look_special: added tokens that are control tokens though not marked special. */
export function looksSpecial(token: string): boolean {
  return (
    ['<pad>', '<mask>', '<2mass>', '[@BOS@]'].includes(token) ||
    (token.startsWith('<|') && token.endsWith('|>')) ||
    (token.startsWith('<｜') && token.endsWith('｜>')) ||
    (token.startsWith('<unused') && token.endsWith('>'))
  );
}

interface AddedToken {
  id: number;
  content: string;
  special: boolean;
  normalized: boolean;
}

function addedTokensOf(tokenizerJson: Json): AddedToken[] {
  const list = Array.isArray(tokenizerJson.added_tokens) ? (tokenizerJson.added_tokens as Json[]) : [];
  return list
    .filter((t) => typeof t.id === 'number' && typeof t.content === 'string')
    .map((t) => ({ id: t.id as number, content: t.content as string, special: t.special === true, normalized: t.normalized === true }));
}

function baseVocab(tokenizerJson: Json, file: string): Map<string, number> {
  const model = tokenizerJson.model as Json | undefined;
  const vocab = model?.vocab;
  if (!vocab || typeof vocab !== 'object' || Array.isArray(vocab)) throw new ModelError('bad_tokenizer', 'model.vocab is not a token-to-id object (only BPE vocabularies are supported for GGUF)', { file });
  return new Map(Object.entries(vocab as Record<string, number>));
}

/**
 * What SpecialVocab collects: merges, special ids, add-special flags, chat template, normalizer flags. `nVocab`
 * bounds the ids as the converter does for SentencePiece-style vocabularies.
 */
export async function specialVocabKeys(dir: string, opts: { loadMerges: boolean; nVocab?: number }): Promise<GgufKv[]> {
  const tjFile = join(dir, 'tokenizer.json');
  const tokenizer = await readJsonIf(tjFile);
  const tokenizerConfig = await readJsonIf(join(dir, 'tokenizer_config.json'));
  const types: string[] = [...SPECIAL_TYPES];
  const ids = new Map<string, number>();
  const addFlags = new Map<string, boolean>();
  let merges: string[] = [];
  let lowercase: boolean | null = null;
  let stripAccents: boolean | null = null;
  const setId = (typ: string, id: unknown) => {
    if (typeof id !== 'number' || !Number.isInteger(id)) return;
    if (id < 0) throw new ModelError('bad_tokenizer', `invalid value for special token type ${typ}: ${id}`, { file: tjFile });
    if (opts.nVocab === undefined || id < opts.nVocab) {
      if (!ids.has(typ)) ids.set(typ, id);
    }
  };
  const parseNormalizer = (n: Json) => {
    if (n.type === 'Lowercase') lowercase = true;
    else if (n.type === 'StripAccents') stripAccents = true;
    else if (n.type === 'BertNormalizer') {
      if ('lowercase' in n) lowercase = n.lowercase as boolean;
      if ('strip_accents' in n) stripAccents = n.strip_accents as boolean;
    } else if (n.type === 'Sequence') for (const m of (n.normalizers as Json[]) ?? []) parseNormalizer(m);
  };
  let added: AddedToken[] = [];
  const cfg = tokenizerConfig ?? {};
  if (tokenizer) {
    if (opts.loadMerges) {
      const m = (tokenizer.model as Json | undefined)?.merges;
      if (Array.isArray(m) && m.length) {
        if (typeof m[0] === 'string') merges = m as string[];
        else if (Array.isArray(m[0]) && m[0].length === 2 && typeof m[0][0] === 'string') {
          // Pairs (transformers ≥ 4.45): a space inside a part is written as U+0120, as the converter does.
          merges = (m as string[][]).map((pair) => pair.map((part) => part.replace(/ /g, '\u0120')).join(' '));
        } else throw new ModelError('bad_tokenizer', 'model.merges is neither strings nor pairs of strings', { file: tjFile });
      }
    }
    if (tokenizer.normalizer && typeof tokenizer.normalizer === 'object') parseNormalizer(tokenizer.normalizer as Json);
    added = addedTokensOf(tokenizer);
    let bos: unknown = cfg.bos_token;
    let cls: unknown = cfg.cls_token;
    let eos: unknown = cfg.eos_token;
    let sep: unknown = cfg.sep_token;
    // The converter compares the config's values (strings or objects) with template ids as Python values.
    if (!bos && cls && tokenizerConfig) tokenizerConfig.bos_token = bos = cls;
    if (!eos && sep && tokenizerConfig) tokenizerConfig.eos_token = eos = sep;
    const post = tokenizer.post_processor as Json | null | undefined;
    if (post) {
      const processors = Array.isArray(post.processors) ? (post.processors as Json[]) : [post];
      for (const p of processors) {
        if (p.type === 'RobertaProcessing') {
          addFlags.set('bos', true).set('eos', true).set('sep', true);
          if (!cls && tokenizerConfig) tokenizerConfig.cls_token = cls = ((p.cls as unknown[]) ?? [bos])[0];
          if (!sep && tokenizerConfig) tokenizerConfig.sep_token = sep = ((p.sep as unknown[]) ?? [eos])[0];
          continue;
        }
        if (p.type !== 'TemplateProcessing') continue;
        const single = (p.single as Json[]) ?? [];
        const pair = (p.pair as Json[]) ?? [];
        const specialId = (part: Json | undefined) => ((part?.SpecialToken as Json | undefined)?.id as string | undefined) || null;
        let first: string | null = null;
        let last: string | null = null;
        if (single.length > 1) {
          first = specialId(single[0]);
          if (first) {
            if (!tokenizerConfig) bos = first;
            else if (first !== bos && first !== cls) {
              if (!bos) tokenizerConfig.bos_token = bos = first;
              if (!cls) tokenizerConfig.cls_token = cls = first;
            }
            addFlags.set('bos', first === bos || first === cls);
          }
          last = specialId(single[single.length - 1]);
          if (last) {
            if (!tokenizerConfig) eos = last;
            else if (last !== eos) {
              if (!types.includes('eot')) {
                types.push('eot');
                tokenizerConfig.eot_token = eos;
              } else if (!types.includes('eom')) {
                types.push('eom');
                tokenizerConfig.eom_token = eos;
              }
              tokenizerConfig.eos_token = eos = last;
            }
            addFlags.set('eos', last === eos);
          }
        }
        if (pair.length) {
          const start = first && specialId(pair[0]) === first ? 1 : 0;
          const stop = last && specialId(pair[pair.length - 1]) === last ? pair.length - 1 : pair.length;
          let mid = pair.slice(start, stop);
          if (mid.length) {
            const a = (mid[0]!.Sequence as Json | undefined)?.id;
            const b = (mid[mid.length - 1]!.Sequence as Json | undefined)?.id;
            mid = mid.slice(1, -1);
            if (a === 'A' && b === 'B' && mid.length) {
              let addSep = false;
              const e0 = specialId(mid[0]);
              if (e0 && (e0 === sep || e0 === eos) && !last) addSep = true;
              if (mid.length === 2) {
                const e1 = specialId(mid[1]);
                if (e1 && (e1 === sep || e1 === eos)) addSep = true;
              }
              addFlags.set('sep', addSep);
              if (addSep && !sep && tokenizerConfig) tokenizerConfig.sep_token = sep = eos;
            }
          }
        }
      }
    }
    if (!tokenizerConfig) {
      // Without tokenizer_config.json the converter stops here: no ids from it, no flags, no template.
      return finish();
    }
  }
  let chatTemplate: unknown = null;
  if (tokenizerConfig) {
    let alt: unknown = null;
    const jinja = join(dir, 'chat_template.jinja');
    const ctJson = join(dir, 'chat_template.json');
    if (existsSync(jinja)) {
      alt = await readInputText(jinja, modelJson('chat_template.jinja'));
      if (existsSync(join(dir, 'additional_chat_templates'))) {
        throw new ModelError('unsupported_tokenizer', 'additional_chat_templates/ is not supported for GGUF output yet', { file: join(dir, 'additional_chat_templates') });
      }
    } else if (existsSync(ctJson)) alt = (await readJsonIf(ctJson))?.chat_template ?? null;
    chatTemplate = 'chat_template' in tokenizerConfig ? tokenizerConfig.chat_template : alt;
    if (chatTemplate !== null && chatTemplate !== undefined && typeof chatTemplate !== 'string') {
      throw new ModelError('unsupported_tokenizer', 'a chat_template that is a list of named templates is not supported for GGUF output yet', { file: join(dir, 'tokenizer_config.json') });
    }
    for (const typ of types) {
      const addEntry = tokenizerConfig[`add_${typ}_token`];
      if (typeof addEntry === 'boolean') addFlags.set(typ, addEntry);
      const entry = tokenizerConfig[`${typ}_token`];
      const text = typeof entry === 'string' ? entry : entry && typeof entry === 'object' && typeof (entry as Json).content === 'string' ? ((entry as Json).content as string) : null;
      if (text === null) continue;
      setId(typ, added.find((t) => t.content === text)?.id);
    }
  }
  return finish();

  async function finish(): Promise<GgufKv[]> {
    const config = await readJsonIf(join(dir, 'config.json'));
    if (config) {
      for (const typ of types) {
        let id = config[`${typ}_token_id`];
        if ((id === null || id === undefined) && config.text_config && typeof config.text_config === 'object') id = (config.text_config as Json)[`${typ}_token_id`];
        setId(typ, id);
      }
    }
    if (opts.loadMerges && merges.length === 0 && existsSync(join(dir, 'merges.txt'))) {
      const text = await readInputText(join(dir, 'merges.txt'), modelJson('merges.txt'));
      const lines = text.split('\n');
      if (lines[0]?.trim().startsWith('#')) lines.shift();
      merges = lines.map((l) => l.trim()).filter(Boolean).map((l) => l.split(/\s+/)).filter((p) => p.length === 2).map((p) => `${p[0]} ${p[1]}`);
    }
    const kvs: GgufKv[] = [];
    if (merges.length) kvs.push({ key: 'tokenizer.ggml.merges', value: arr('string', merges) });
    // GGUFWriter's key per special type (llama.cpp's spelling); it has none for cls, which the converter skips.
    const ID_KEYS: Record<string, string> = { bos: 'bos_token_id', eos: 'eos_token_id', unk: 'unknown_token_id', sep: 'seperator_token_id', pad: 'padding_token_id', mask: 'mask_token_id', eot: 'eot_token_id', eom: 'eom_token_id' };
    for (const [typ, id] of ids) if (ID_KEYS[typ]) kvs.push({ key: `tokenizer.ggml.${ID_KEYS[typ]}`, value: u32(id) });
    // GGUFWriter has add_add_{bos,eos,sep}_token only; other flags are skipped with a warning by the converter.
    for (const [typ, v] of addFlags) if (typ === 'bos' || typ === 'eos' || typ === 'sep') kvs.push({ key: `tokenizer.ggml.add_${typ}_token`, value: bool(v) });
    if (typeof chatTemplate === 'string') kvs.push({ key: 'tokenizer.chat_template', value: str(chatTemplate) });
    if (lowercase !== null) kvs.push({ key: 'tokenizer.ggml.normalizer.lowercase', value: bool(lowercase) });
    if (stripAccents !== null) kvs.push({ key: 'tokenizer.ggml.normalizer.strip_accents', value: bool(stripAccents) });
    return kvs;
  }
}

/** TextModel._set_vocab_gpt2 (get_vocab_base): byte-level BPE with merges. */
async function gpt2Vocab(dir: string, t: TransformersTokenizer, vocabSize: number | null): Promise<GgufKv[]> {
  const tjFile = join(dir, 'tokenizer.json');
  const reverse = new Map<number, string>();
  for (const [tok, id] of baseVocab(t.tokenizerJson, tjFile)) reverse.set(id, tok);
  const added = addedTokensOf(t.tokenizerJson);
  for (const a of added) reverse.set(a.id, a.content);
  let maxId = -1;
  for (const id of reverse.keys()) if (id > maxId) maxId = id; // no spread: vocabularies exceed the argument limit
  const n = vocabSize ?? reverse.size;
  if (maxId >= n) throw new ModelError('bad_tokenizer', `token id ${maxId} is not below config.json's vocab_size ${n}`, { file: tjFile });
  const pre = choosePreTokenizer(t, dir);
  const addedById = new Map(added.map((a) => [a.id, a]));
  const tokens: string[] = [];
  const types: number[] = [];
  for (let i = 0; i < n; i++) {
    let token = reverse.get(i);
    if (token === undefined) {
      tokens.push(`[PAD${i}]`);
      types.push(TokenType.UNUSED);
      continue;
    }
    const a = addedById.get(i);
    if (a && a.content === token) {
      // llama.cpp takes added tokens as pre-normalised, so the converter round-trips the non-normalised ones.
      if (!a.normalized) token = t.tokenizer.decode(t.tokenizer.encode(token, { add_special_tokens: false }).ids);
      if (a.special || looksSpecial(token)) types.push(TokenType.CONTROL);
      else {
        token = token.replace(/\u2581/g, ' ');
        types.push(TokenType.USER_DEFINED);
      }
    } else types.push(TokenType.NORMAL);
    tokens.push(token);
  }
  return [
    { key: 'tokenizer.ggml.model', value: str('gpt2') },
    { key: 'tokenizer.ggml.pre', value: str(pre.name) },
    { key: 'tokenizer.ggml.tokens', value: arr('string', tokens) },
    { key: 'tokenizer.ggml.token_type', value: arr('i32', types) },
    ...(await specialVocabKeys(dir, { loadMerges: true })),
  ];
}

/**
 * gguf-py's LlamaHfVocab: a SentencePiece-style BPE (byte fallback) from tokenizer.json alone. Scores are the
 * converter's placeholder -1000; types BYTE for <0xXX>, CONTROL for transformers' special tokens, else NORMAL.
 * Returns null where the converter's reader refuses the file (it then falls back to byte-level BPE).
 */
async function llamaHfVocab(dir: string, t: TransformersTokenizer): Promise<GgufKv[] | null> {
  const model = t.tokenizerJson.model as Json;
  const isLlama3 = model.type === 'BPE' && model.ignore_merges === true && model.byte_fallback !== true;
  if (isLlama3) return null;
  if (model.type !== 'BPE' || model.byte_fallback !== true || (t.tokenizerJson.decoder as Json | undefined)?.type !== 'Sequence') return null;
  const tjFile = join(dir, 'tokenizer.json');
  const base = baseVocab(t.tokenizerJson, tjFile);
  const baseSize = base.size;
  const reverse = new Map<number, string>();
  for (const [tok, id] of base) reverse.set(id, tok);
  const added = addedTokensOf(t.tokenizerJson);
  for (const a of added) reverse.set(a.id, a.content);
  const extra = added.filter((a) => a.id >= baseSize).sort((a, b) => a.id - b.id);
  // transformers' all_special_tokens: the named special tokens (config, then special_tokens_map, then class defaults).
  const specialIds = new Set<number>();
  const specialNames = new Set<string>();
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token']) {
    const v = key in t.config ? t.config[key] : t.specialTokensMap[key];
    const text = typeof v === 'string' ? v : v && typeof v === 'object' ? ((v as Json).content as string | undefined) : undefined;
    const resolved = text ?? (key === 'bos_token' ? t.bosToken : key === 'eos_token' ? t.eosToken : null);
    if (resolved) specialNames.add(resolved);
  }
  for (const extraKey of ['additional_special_tokens', 'extra_special_tokens']) {
    const v = (t.config[extraKey] ?? t.specialTokensMap[extraKey]) as unknown;
    if (Array.isArray(v)) for (const e of v) specialNames.add(typeof e === 'string' ? e : ((e as Json).content as string));
  }
  for (const name of specialNames) {
    const id = t.tokenizer.token_to_id(name);
    if (id !== undefined) specialIds.add(id);
  }
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: number[] = [];
  const typeOf = (id: number, text: string) => (/^<0x[0-9A-Fa-f]{2}>$/.test(text) ? TokenType.BYTE : specialIds.has(id) ? TokenType.CONTROL : TokenType.NORMAL);
  for (let id = 0; id < baseSize; id++) {
    const text = reverse.get(id);
    if (text === undefined) throw new ModelError('bad_tokenizer', `no token has id ${id} though the vocabulary has ${baseSize} entries`, { file: tjFile });
    tokens.push(text);
    scores.push(-1000);
    types.push(typeOf(id, text));
  }
  for (const a of extra) {
    tokens.push(a.content);
    scores.push(-1000);
    types.push(specialNames.has(a.content) ? typeOf(a.id, '') : TokenType.USER_DEFINED);
  }
  return llamaVocabKeys(dir, tokens, scores, types);
}

/** The keys of a SentencePiece-style ("llama") vocabulary: pieces, scores, types, then the special ids. */
async function llamaVocabKeys(dir: string, tokens: string[], scores: number[], types: number[]): Promise<GgufKv[]> {
  return [
    { key: 'tokenizer.ggml.model', value: str('llama') },
    { key: 'tokenizer.ggml.pre', value: str('default') },
    { key: 'tokenizer.ggml.tokens', value: arr('string', tokens) },
    { key: 'tokenizer.ggml.scores', value: arr('f32', scores) },
    { key: 'tokenizer.ggml.token_type', value: arr('i32', types) },
    ...(await specialVocabKeys(dir, { loadMerges: false, nVocab: tokens.length })),
  ];
}

/** TextModel._create_vocab_sentencepiece: pieces, scores and types from tokenizer.model, then added tokens. */
async function sentencePieceVocab(dir: string, vocabSize: number | null): Promise<GgufKv[]> {
  const spm = await readSentencePieceModel(join(dir, 'tokenizer.model'));
  const n = vocabSize ?? spm.length;
  const tokens: string[] = Array.from({ length: n }, (_, i) => `[PAD${i}]`);
  const scores: number[] = new Array(n).fill(-10000);
  const types: number[] = new Array(n).fill(TokenType.UNUSED);
  for (let id = 0; id < spm.length && id < n; id++) {
    const p = spm[id]!;
    tokens[id] = p.piece;
    scores[id] = p.score;
    // SentencePiece's USER_DEFINED pieces stay NORMAL: the converter asks only IsUnknown/IsControl/IsUnused/IsByte.
    types[id] = p.type === TokenType.UNKNOWN || p.type === TokenType.CONTROL || p.type === TokenType.UNUSED || p.type === TokenType.BYTE ? p.type : TokenType.NORMAL;
  }
  const addedTokens = await readJsonIf(join(dir, 'added_tokens.json'));
  for (const [key, id] of Object.entries(addedTokens ?? {})) {
    if (typeof id !== 'number' || id >= n) continue;
    tokens[id] = key;
    scores[id] = -1000;
    types[id] = TokenType.USER_DEFINED;
  }
  const cfg = await readJsonIf(join(dir, 'tokenizer_config.json'));
  const decoder = (cfg?.added_tokens_decoder ?? {}) as Record<string, Json>;
  for (const [k, data] of Object.entries(decoder)) {
    const id = Number(k);
    let token = data.content as string;
    if (!(id < n)) continue;
    if (data.special || looksSpecial(token)) types[id] = TokenType.CONTROL;
    else {
      token = token.replace(/\u2581/g, ' ');
      types[id] = TokenType.USER_DEFINED;
    }
    scores[id] = -1000;
    tokens[id] = token;
  }
  return llamaVocabKeys(dir, tokens, scores, types);
}

/**
 * The tokenizer keys llama.cpp's converter writes for the model folder `modelDir` (one we output: config.json's
 * architecture decides the vocabulary reader, as in the converter's set_vocab for that architecture).
 */
export async function vocabMetadata(modelDir: string): Promise<GgufKv[]> {
  const cfgFile = join(modelDir, 'config.json');
  const config = await readJsonIf(cfgFile);
  if (!config) throw new ModelError('missing_config', 'no config.json', { file: cfgFile });
  const arch = Array.isArray(config.architectures) ? config.architectures[0] : undefined;
  const vocabSize = typeof config.vocab_size === 'number' ? config.vocab_size : null;
  const hasSpm = existsSync(join(modelDir, 'tokenizer.model'));
  const tokenizerConfig = await readJsonIf(join(modelDir, 'tokenizer_config.json'));
  if (arch === 'MixtralForCausalLM') {
    // LlamaModel.set_vocab: SentencePiece, else a SentencePiece-style tokenizer.json, else byte-level BPE.
    if (vocabSize === 32016) throw new ModelError('unsupported_tokenizer', 'CodeLlama vocabularies (vocab_size 32016) are not supported for GGUF output yet', { file: cfgFile, field: 'vocab_size' });
    const prefix: GgufKv[] = typeof tokenizerConfig?.add_prefix_space === 'boolean' ? [{ key: 'tokenizer.ggml.add_space_prefix', value: bool(tokenizerConfig.add_prefix_space) }] : [];
    let kvs: GgufKv[];
    if (hasSpm) kvs = await sentencePieceVocab(modelDir, vocabSize);
    else {
      const t = await loadTransformersTokenizer(modelDir);
      kvs = (await llamaHfVocab(modelDir, t)) ?? (await gpt2Vocab(modelDir, t, vocabSize));
    }
    // Granite's small models: the converter turns add_bos off after the vocabulary.
    const tail: GgufKv[] = vocabSize === 49152 ? [{ key: 'tokenizer.ggml.add_bos_token', value: bool(false) }] : [];
    return overwrite([...prefix, ...kvs, ...tail]);
  }
  if (arch === 'DeepseekForCausalLM') {
    if (hasSpm) return sentencePieceVocab(modelDir, vocabSize);
    return gpt2Vocab(modelDir, await loadTransformersTokenizer(modelDir), vocabSize);
  }
  if (arch === 'Qwen2MoeForCausalLM' || arch === 'Qwen3MoeForCausalLM') {
    return gpt2Vocab(modelDir, await loadTransformersTokenizer(modelDir), vocabSize);
  }
  throw new ModelError('unsupported_architecture', `architecture ${JSON.stringify(arch)} has no GGUF vocabulary reader (expected one of MixtralForCausalLM, DeepseekForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM)`, { file: cfgFile, field: 'architectures' });
}

/** A key written twice keeps its first place and its last value, as in GGUFWriter's dict. */
function overwrite(kvs: GgufKv[]): GgufKv[] {
  const out = new Map<string, GgufKv>();
  for (const kv of kvs) out.set(kv.key, kv);
  return [...out.values()];
}
