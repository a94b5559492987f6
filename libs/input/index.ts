import { closeSync, constants, fstatSync, openSync, readSync, statSync, type Stats } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Document, LineCounter } from 'yaml';
import type * as Yaml from 'yaml';
import { ForgeError, ModelError, RecipeError, type ErrorPlace } from '../errors';

// Loaded at first parse: code that reaches this library only for its file checks (the command's first lines) skips it.
const yaml = (): typeof Yaml => require('yaml');

/**
 * The one reader of the YAML, JSON and JSON Lines files a user hands us (recipes, held-out prompts, model
 * configs): every such file gets the same limits and the same one-line messages.
 */

/** Far beyond any recipe, prompt list or config; a bound, so that a huge or endless file is refused, not read. */
export const MAX_INPUT_BYTES = 64 * 1024 * 1024;
/** Aliases a document may expand (an alias bomb expands each into a node full of aliases). */
export const MAX_ALIAS_COUNT = 100;

export interface InputKind {
  /** What the file is, for messages: "recipe", "held-out prompts file", "config.json". */
  what: string;
  /** Error code prefix, and the class to throw (RecipeError for recipes). */
  code: string;
  error?: new (code: string, message: string, place?: ErrorPlace) => ForgeError;
  /** The bound, when not MAX_INPUT_BYTES. */
  maxBytes?: number;
}

/** The kinds of file read here (one place, so the Nx plugin can name them without loading the recipe schema). */
export const RECIPE: InputKind = { what: 'recipe', code: 'recipe', error: RecipeError };
export const EVAL_PROMPTS: InputKind = { what: 'held-out prompts file', code: 'bad_eval_prompts' };
export const MODEL_CONFIG: InputKind = { what: 'config.json', code: 'config', error: ModelError };
/** A model folder's other JSON files (weight index, tokenizer files, generation_config.json): a large vocabulary's
 * tokenizer.json runs to tens of megabytes, so a looser bound, still a bound. */
export const modelJson = (name: string): InputKind => ({ what: name, code: 'model_json', error: ModelError, maxBytes: 256 * 1024 * 1024 });

const fail = (kind: InputKind, code: string, message: string, place: ErrorPlace) => new (kind.error ?? ForgeError)(`${kind.code}_${code}`, message, place);

// A FIFO opened without O_NONBLOCK waits for a writer: the reader would hang before it could fstat and refuse.
const FLAGS = constants.O_RDONLY | (constants.O_NONBLOCK ?? 0);

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a folder';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a file';
}

function openError(e: unknown, file: string, kind: InputKind): ForgeError {
  const code = (e as NodeJS.ErrnoException).code;
  return fail(kind, code === 'ENOENT' ? 'missing' : 'unreadable', `cannot read the ${kind.what} (${code ?? (e as Error).message})`, { file });
}

function checkStats(st: Stats, file: string, kind: InputKind, maxBytes: number): void {
  if (!st.isFile()) throw fail(kind, 'not_file', `the ${kind.what} is not a regular file (${kindOf(st)})`, { file });
  if (st.size > maxBytes) throw fail(kind, 'too_large', `the ${kind.what} is ${st.size} bytes, more than the ${maxBytes} a ${kind.what} may have`, { file });
}

/** The check without the read, for a command line's early checks: exists, is a regular file, within the size bound. */
export function checkInputFile(file: string, kind: InputKind, maxBytes = kind.maxBytes ?? MAX_INPUT_BYTES): void {
  let st: Stats;
  try {
    st = statSync(file);
  } catch (e) {
    throw openError(e, file, kind);
  }
  checkStats(st, file, kind, maxBytes);
}

const decode = (buf: Buffer, n: number, file: string, kind: InputKind, maxBytes: number) => {
  if (n > maxBytes) throw fail(kind, 'too_large', `the ${kind.what} is more than the ${maxBytes} bytes a ${kind.what} may have`, { file });
  return buf.subarray(0, n).toString('utf8');
};

/** A regular file's text (UTF-8, any BOM kept: callers parse with `stripBom`), read to at most maxBytes. */
export async function readInputText(file: string, kind: InputKind, maxBytes = kind.maxBytes ?? MAX_INPUT_BYTES): Promise<string> {
  let fh;
  try {
    fh = await open(file, FLAGS);
  } catch (e) {
    throw openError(e, file, kind);
  }
  try {
    const st = await fh.stat();
    checkStats(st, file, kind, maxBytes);
    // Until end of file or one byte past the bound: a file that grows while read is refused there, never read whole.
    const chunks: Buffer[] = [];
    let n = 0;
    while (n <= maxBytes) {
      // Unfilled: only what was read is kept (a tokenizer.json is ~9 MB; zeroing it first touched it once more).
      const buf = Buffer.allocUnsafe(Math.min(maxBytes + 1 - n, Math.max(st.size + 1 - n, 65536)));
      const { bytesRead } = await fh.read(buf, 0, buf.length, n);
      if (bytesRead === 0) break;
      chunks.push(buf.subarray(0, bytesRead));
      n += bytesRead;
    }
    return decode(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), n, file, kind, maxBytes);
  } finally {
    await fh.close();
  }
}

/** readInputText for synchronous callers (the Nx plugin builds its project graph synchronously). */
export function readInputTextSync(file: string, kind: InputKind, maxBytes = kind.maxBytes ?? MAX_INPUT_BYTES): string {
  let fd: number;
  try {
    fd = openSync(file, FLAGS);
  } catch (e) {
    throw openError(e, file, kind);
  }
  try {
    const st = fstatSync(fd);
    checkStats(st, file, kind, maxBytes);
    const chunks: Buffer[] = [];
    let n = 0;
    while (n <= maxBytes) {
      const buf = Buffer.allocUnsafe(Math.min(maxBytes + 1 - n, Math.max(st.size + 1 - n, 65536)));
      const r = readSync(fd, buf, 0, buf.length, n);
      if (r === 0) break;
      chunks.push(buf.subarray(0, r));
      n += r;
    }
    return decode(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), n, file, kind, maxBytes);
  } finally {
    closeSync(fd);
  }
}

/** Text without a leading UTF-8 byte order mark, as editors on Windows write them. */
export const stripBom = (text: string) => (text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);

export interface YamlInput {
  doc: Document;
  lc: LineCounter;
  /** The document as plain data (aliases expanded, within MAX_ALIAS_COUNT). */
  data: unknown;
}

/**
 * A YAML document, BOM or not; a syntax error or an alias bomb is one error naming the file, line and column.
 * `expected` ends the message ("Expected a YAML list of ...").
 */
export function parseYamlInput(text: string, file: string, kind: InputKind, expected = ''): YamlInput {
  const { LineCounter, parseDocument, visit } = yaml();
  const lc = new LineCounter();
  const doc = parseDocument(stripBom(text), { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0]!;
    const { line, col } = lc.linePos(e.pos[0]);
    throw fail(kind, 'yaml_syntax', `invalid YAML: ${e.message.split('\n')[0]}${expected}`, { file, line, column: col });
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (e) {
    // An alias bomb ("billion laughs"): point at its first alias.
    let line: number | undefined;
    let column: number | undefined;
    visit(doc, {
      Alias(_, node) {
        if (node.range) ({ line, col: column } = lc.linePos(node.range[0]));
        return visit.BREAK;
      },
    });
    throw fail(kind, 'yaml_aliases', `too many aliases: the YAML's anchors and aliases expand beyond what a ${kind.what} needs (${(e as Error).message.split('\n')[0]})`, { file, line, column });
  }
  return { doc, lc, data };
}

/** One JSON value (a JSON file, or one line of JSON Lines), BOM or not. */
export function parseJsonInput(text: string, file: string, kind: InputKind, line?: number, expected = ''): unknown {
  try {
    return JSON.parse(stripBom(text));
  } catch (e) {
    throw fail(kind, 'json_syntax', `invalid JSON (${(e as Error).message})${expected}`, { file, line });
  }
}
