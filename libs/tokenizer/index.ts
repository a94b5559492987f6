import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { Tokenizer } from '@huggingface/tokenizers';
import { ModelError } from '../errors';

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
  /** The reference's tokenisation: the string `bos_token + prompt`, without special tokens added. */
  encodePrompt(prompt: string): number[];
}

function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

async function readJson(file: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new ModelError('bad_tokenizer', `not valid JSON (${(e as Error).message})`, { file });
  }
}

export async function loadTokenizer(dir: string): Promise<PromptTokenizer> {
  const tjFile = join(dir, 'tokenizer.json');
  if (!existsSync(tjFile)) {
    throw new ModelError('missing_tokenizer', 'the base model has no tokenizer.json (a fast tokenizer is needed to tokenize prompts)', { file: tjFile });
  }
  const tokenizerJson = await readJson(tjFile);
  const cfgFile = join(dir, 'tokenizer_config.json');
  const config = existsSync(cfgFile) ? await readJson(cfgFile) : {};
  const stmFile = join(dir, 'special_tokens_map.json');
  const stm = existsSync(stmFile) ? await readJson(stmFile) : {};
  const bosToken = tokenText(config.bos_token) ?? tokenText(stm.bos_token);
  const eosToken = tokenText(config.eos_token) ?? tokenText(stm.eos_token);
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tokenizerJson, config);
  } catch (e) {
    throw new ModelError('bad_tokenizer', `cannot load tokenizer (${(e as Error).message})`, { file: tjFile });
  }
  const padToken = bosToken ?? eosToken;
  if (padToken === null) {
    throw new ModelError('no_pad_token', 'tokenizer has neither a BOS nor an EOS token, so prompts cannot be padded as the reference does', { file: cfgFile });
  }
  const padTokenId = tok.token_to_id(padToken);
  if (padTokenId === undefined) throw new ModelError('bad_tokenizer', `special token ${JSON.stringify(padToken)} is not in the vocabulary`, { file: tjFile });
  const h = createHash('sha256');
  for (const f of TOKENIZER_FILES) {
    const p = join(dir, f);
    if (existsSync(p)) h.update(f).update('\0').update(await readFile(p)).update('\0');
  }
  return {
    dir,
    bosToken,
    eosToken,
    padToken,
    padTokenId,
    contentId: h.digest('hex'),
    encodePrompt(prompt: string): number[] {
      return tok.encode((bosToken ?? '') + prompt, { add_special_tokens: false }).ids;
    },
  };
}
