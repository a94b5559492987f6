/**
 * JSON as the Python tools write it. JSON.parse/JSON.stringify lose a number's form (`0.0` becomes `0`,
 * `10000.0` becomes `10000`, a 31-digit int becomes `1e+30`), and transformers 5 refuses an int where its
 * config class declares a float. So every JSON file we emit goes through `jsonText`, which writes a number
 * with the literal it had in the input (when unchanged) or, for keys we add, as the consumer types it.
 */

/** A value's place in a document: object keys and array indices from the root. */
export type JsonPath = readonly (string | number)[];

export const pathKey = (path: JsonPath): string => JSON.stringify(path);

export interface LosslessJson {
  value: unknown;
  /** The source text of every number, by `pathKey`. */
  literals: Record<string, string>;
}

/** Parses JSON (errors as JSON.parse gives them) and keeps each number's literal text. */
export function parseJsonLossless(text: string): LosslessJson {
  const value = JSON.parse(text);
  const literals: Record<string, string> = {};
  let i = 0;
  const ws = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\n' || text[i] === '\r' || text[i] === '\t' || text[i] === '\ufeff')) i++;
  };
  const str = (): string => {
    const start = i++;
    while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  const walk = (path: (string | number)[]): void => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      ws();
      if (text[i] === '}') return void i++;
      for (;;) {
        ws();
        const k = str();
        ws();
        i++; // ':'
        walk([...path, k]);
        ws();
        if (text[i++] === '}') return;
      }
    }
    if (c === '[') {
      i++;
      ws();
      if (text[i] === ']') return void i++;
      for (let n = 0; ; n++) {
        walk([...path, n]);
        ws();
        if (text[i++] === ']') return;
      }
    }
    if (c === '"') return void str();
    const m = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|^(?:true|false|null)/.exec(text.slice(i, i + 400));
    if (!m) throw new SyntaxError(`unexpected JSON at offset ${i}`);
    if (c !== 't' && c !== 'f' && c !== 'n') literals[pathKey(path)] = m[0];
    i += m[0].length;
  };
  walk([]);
  return { value, literals };
}

/** Whether a number literal is written as a Python float (has a fraction or an exponent). */
export const isFloatLiteral = (lit: string): boolean => /[.eE]/.test(lit);

/** Python's repr of a float, which json.dumps writes: shortest round-trip digits, `1.0`, `1e-05`, `1e+30`. */
export function pythonFloat(x: number): string {
  if (!Number.isFinite(x)) throw new RangeError(`${x} cannot be written as JSON`);
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expText] = x.toExponential().split('e') as [string, string];
  const exp = Number(expText);
  const sign = x < 0 ? '-' : '';
  const digits = mant.replace('-', '').replace('.', '');
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  const int = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
  return `${sign}${int}.${digits.slice(exp + 1) || '0'}`;
}

/** An integer as Python writes it: every digit, never an exponent. */
function pythonInt(x: number): string {
  return Math.abs(x) < 1e21 ? String(x) : BigInt(x).toString();
}

export interface JsonTextOptions {
  /** Literal text by `pathKey`: used for a number whose value it still denotes. */
  literals?: Record<string, string>;
  /** Whether the consumer types the number at this path as a float (it is then never written as an int). */
  isFloat?: (path: JsonPath) => boolean;
  /** Spaces per level (Python's `indent`); 0 writes one line as `json.dumps` without indent does. */
  indent?: number;
}

/** The text of one number at `path`, as `jsonText` writes it. */
export function numberText(x: number, path: JsonPath, opts: JsonTextOptions = {}): string {
  const float = opts.isFloat?.(path) ?? false;
  const lit = opts.literals?.[pathKey(path)];
  if (lit !== undefined && Number(lit) === x && (!float || isFloatLiteral(lit))) return lit;
  if (float || !Number.isInteger(x)) return pythonFloat(x);
  return pythonInt(x);
}

/**
 * JSON text with `indent` spaces per level and a final newline, formatted as JSON.stringify(v, null, indent)
 * (which is also how Python's json.dumps(indent=…) lays it out), numbers as `numberText` writes them.
 */
export function jsonText(value: unknown, opts: JsonTextOptions = {}): string {
  const indent = opts.indent ?? 2;
  const write = (v: unknown, path: (string | number)[], depth: number): string | undefined => {
    if (v === null) return 'null';
    if (typeof v === 'number') return numberText(v, path, opts);
    if (typeof v === 'string' || typeof v === 'boolean') return JSON.stringify(v);
    if (typeof v === 'bigint') return v.toString();
    if (typeof v !== 'object') return undefined;
    const pad = indent > 0 ? '\n' + ' '.repeat(indent * (depth + 1)) : '';
    const end = indent > 0 ? '\n' + ' '.repeat(indent * depth) : '';
    const sep = indent > 0 ? ',' : ', ';
    if (Array.isArray(v)) {
      if (v.length === 0) return '[]';
      return `[${v.map((x, n) => pad + (write(x, [...path, n], depth + 1) ?? 'null')).join(sep)}${end}]`;
    }
    const items: string[] = [];
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      const t = write(x, [...path, k], depth + 1);
      if (t !== undefined) items.push(`${pad}${JSON.stringify(k)}: ${t}`);
    }
    return items.length === 0 ? '{}' : `{${items.join(sep)}${end}}`;
  };
  return (write(value, [], 0) ?? 'null') + '\n';
}

/** Every number's text as `jsonText` would write it, by `pathKey` (to carry a decided form in a plain JSON file). */
export function numberForms(value: unknown, opts: JsonTextOptions = {}): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (v: unknown, path: (string | number)[]) => {
    if (typeof v === 'number') out[pathKey(path)] = numberText(v, path, opts);
    else if (Array.isArray(v)) v.forEach((x, n) => walk(x, [...path, n]));
    else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, [...path, k]);
  };
  walk(value, []);
  return out;
}
