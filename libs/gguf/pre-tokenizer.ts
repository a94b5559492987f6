// The `tokenizer.ggml.pre` value of a byte-level BPE tokenizer: the name llama.cpp's converter gives it where it
// recognises the tokenizer (a hash of the token ids of its check text), else the llama.cpp pre-tokenizer that is
// shown, on a set of texts, to tokenize exactly as transformers does; refused in one line when none does.
// The candidates' regexes run through our tokenizer library's Split (JavaScript Unicode property classes), which
// for these patterns splits as llama.cpp's unicode code does; llama.cpp's own tokenization of a fixture prompt is
// checked through node-llama-cpp in test/gguf/llama-cpp-generate.test.ts.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { Tokenizer } from '@huggingface/tokenizers';
import { ModelError } from '../errors';
import type { TransformersTokenizer } from '../tokenizer';
import { CONVERTER_CHECK_TEXT, CONVERTER_PRE_TOKENIZER_HASHES } from './pre-tokenizer-hashes';

/** Python's str() of a list of ints, which is what the converter hashes. */
export function pythonIntList(ids: readonly number[]): string {
  return `[${ids.join(', ')}]`;
}

/**
 * The converter's hash: sha256 of str(tokenizer.encode(chktxt)), special tokens added as transformers adds them by
 * default (a BOS that the post-processor prepends is part of it).
 */
export function converterHash(tokenizer: Tokenizer): string {
  const ids = tokenizer.encode(CONVERTER_CHECK_TEXT).ids;
  return createHash('sha256').update(pythonIntList(ids)).digest('hex');
}

export interface LlamaCppPreTokenizer {
  /** The name written in tokenizer.ggml.pre. */
  name: string;
  /** llama.cpp's regexes for it (llama-vocab.cpp, llm_tokenizer_bpe), applied in turn, each splitting the pieces of the one before. */
  regexes: string[];
  /** llama.cpp sets ignore_merges for this pre-tokenizer: a piece that is a whole token is not merged. */
  ignoreMerges: boolean;
  /** The regex a tokenizer.json of this family carries, when it is not the same text as llama.cpp's. */
  original?: string;
}

const GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const CONTRACTIONS_ANY_CASE = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const CONTRACTIONS_I = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
const LLAMA3_TAIL = "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_TAIL = "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** The candidates tried for a tokenizer the converter does not know, in this order after the declared one. */
export const CANDIDATES: readonly LlamaCppPreTokenizer[] = [
  { name: 'gpt-2', regexes: [GPT2], ignoreMerges: false, original: `${GPT2}|\\s+` },
  { name: 'llama-bpe', regexes: [CONTRACTIONS_ANY_CASE + LLAMA3_TAIL], ignoreMerges: true, original: CONTRACTIONS_I + LLAMA3_TAIL },
  { name: 'qwen2', regexes: [CONTRACTIONS_ANY_CASE + QWEN2_TAIL], ignoreMerges: false, original: CONTRACTIONS_I + QWEN2_TAIL },
  { name: 'starcoder', regexes: ['\\p{N}', GPT2], ignoreMerges: false },
];

/**
 * Texts a pre-tokenizer is checked on: digits, punctuation, contractions, whitespace runs, non-ASCII (composed and
 * decomposed), and the converter's own check text.
 */
export const CHECK_TEXTS: readonly string[] = [
  'Hello world! How are you today?',
  '3 33 333 3333 33333 1234567890 3.14159 1,000,000 -42 +7 2024-06-01 x2 a1b2c3',
  "I've been told he's there. You're sure? We'll see, I'd say; they'd've known. DON'T SHOUT, It'S fine, 'quoted'",
  '!!! ??? ... --- === *** ((())) [[]] {{}} <<>> @#$%^&_~` \\ / | "double" \'single\'',
  'a  b   c    d\te\t\tf\n\ng \n h\r\n i   \n\n   j    ',
  '   leading spaces and trailing spaces   ',
  '\n\n\nnewlines first\n',
  'Café naïve façade résumé Ünïcödé ÆØÅ æøå ß',
  'Cafe\u0301 decomposed e\u0301 and n\u0303',
  'Привет, мир! Ελληνικά. עברית. العربية. हिन्दी। 日本語のテキスト。中文，标点！한국어 텍스트',
  'emoji 🚀🦙 😶\u200d🌫️ ✅ flags 🇫🇷 zero\u200bwidth',
  'tabs\tand\u00a0non-breaking\u2003em-space\u3000ideographic',
  "code: def f(x):\n    return x**2  # comment\n\tif (a<b && c>=d) { y = a[i]; }",
  'mixed123abc ABC123def 1st 2nd 3rd 4th and snake_case camelCase',
  CONVERTER_CHECK_TEXT,
];

/** tokenizer.json's pipeline with llama.cpp's pre-tokenization for `pre` in place of its own, and no normalizer. */
export function llamaCppPipeline(pipelineJson: Record<string, unknown>, pre: LlamaCppPreTokenizer): Record<string, unknown> {
  const model = pipelineJson.model as Record<string, unknown>;
  return {
    ...pipelineJson,
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        ...pre.regexes.map((r) => ({ type: 'Split', pattern: { Regex: r }, behavior: 'Isolated', invert: false })),
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      ],
    },
    post_processor: null,
    model: { ...model, ignore_merges: pre.ignoreMerges },
  };
}

/** The regex a pipeline's own pre-tokenizer splits with, if it is one we can name. */
function declaredRegex(pipelineJson: Record<string, unknown>): string | null {
  const pt = pipelineJson.pre_tokenizer as Record<string, unknown> | null | undefined;
  const parts = pt?.type === 'Sequence' ? ((pt.pretokenizers as Record<string, unknown>[]) ?? []) : pt ? [pt] : [];
  for (const p of parts) {
    if (p.type === 'ByteLevel' && p.use_regex !== false) return `${GPT2}|\\s+`;
    const pattern = p.pattern as { Regex?: unknown } | undefined;
    if (p.type === 'Split' && typeof pattern?.Regex === 'string') return pattern.Regex;
  }
  return null;
}

export interface PreTokenizerChoice {
  name: string;
  /** 'converter': the converter's hash list names it; 'checked': chosen by tokenizing CHECK_TEXTS. */
  how: 'converter' | 'checked';
  hash: string;
}

function firstDifference(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i === a.length && i === b.length ? -1 : i;
}

/**
 * The pre-tokenizer name for a byte-level BPE tokenizer loaded as transformers 5 loads it; candidates run through
 * the same tokenizer library with llama.cpp's pre-tokenization in place of the tokenizer's own.
 */
export function choosePreTokenizer(t: TransformersTokenizer, dir: string): PreTokenizerChoice {
  const hash = converterHash(t.tokenizer);
  const known = CONVERTER_PRE_TOKENIZER_HASHES.get(hash);
  if (known !== undefined) return { name: known, how: 'converter', hash };
  const declared = declaredRegex(t.pipelineJson);
  const ordered = [...CANDIDATES].sort((a, b) => Number(b.original === declared || b.regexes[0] === declared) - Number(a.original === declared || a.regexes[0] === declared));
  const reference = CHECK_TEXTS.map((text) => t.tokenizer.encode(text, { add_special_tokens: false }).ids);
  const misses: string[] = [];
  for (const cand of ordered) {
    const tok = t.withPipeline(llamaCppPipeline(t.pipelineJson, cand));
    let miss: string | null = null;
    for (let i = 0; i < CHECK_TEXTS.length && miss === null; i++) {
      const ids = tok.encode(CHECK_TEXTS[i], { add_special_tokens: false }).ids;
      const at = firstDifference(ids, reference[i]);
      if (at >= 0) miss = `${cand.name} differs on check text ${i + 1} at token ${at}`;
    }
    if (miss === null) return { name: cand.name, how: 'checked', hash };
    misses.push(miss);
  }
  throw new ModelError(
    'unknown_pre_tokenizer',
    `llama.cpp's converter does not recognise this tokenizer (check hash ${hash.slice(0, 12)}…) and none of llama.cpp's pre-tokenizers ${CANDIDATES.map((c) => c.name).join(', ')} tokenizes as transformers does (${misses.join('; ')}), so no GGUF can be written for it`,
    { file: join(dir, 'tokenizer.json') },
  );
}
