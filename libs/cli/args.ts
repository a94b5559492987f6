import { ForgeError } from '../errors';

/** A value as the message shows it: a number as JavaScript prints it (the CLI's "1e20" and Nx's 1e20 alike). */
function shown(v: unknown): string {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  return Number.isNaN(n) ? JSON.stringify(String(v)) : String(n);
}

// Beyond 2^53 integers are not exact in JavaScript (nor in the JSON that stage outputs carry them in).
const MAX = Number.MAX_SAFE_INTEGER;

/** --random-seed (Nx: randomSeed), for the CLI and the executors alike: an integer from 0 to 2^53 - 1. */
export function checkSeed(value: unknown, flag = '--random-seed'): number {
  const n = typeof value === 'number' ? value : typeof value === 'string' && value.trim() !== '' ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < 0) throw new ForgeError('bad_flag', `must be an integer from 0 to ${MAX}, got ${shown(value)}`, { field: flag });
  return n;
}

/** --out-shard-size (Nx: outShardSize), for the CLI and the executors alike: parse_kmb's text or a number of bytes. */
export function checkShardSize(value: unknown, flag = '--out-shard-size'): number {
  const n = typeof value === 'number' ? value : parseKmb(String(value), flag);
  if (!Number.isSafeInteger(n) || n < 0) throw new ForgeError('bad_flag', `must be a number of bytes from 0 to ${MAX} (k, m or b suffixes allowed), got ${shown(value)}`, { field: flag });
  return n;
}

/** The reference's parse_kmb: digits, optionally with a k/m/b suffix (×10³, ×10⁶, ×10⁹). */
export function parseKmb(text: string, flag = '--out-shard-size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMbB]?)\s*$/.exec(text);
  if (!m) throw new ForgeError('bad_flag', `${flag} expects a number with an optional k, m or b suffix (e.g. 500m, 5B), got "${text}"`);
  const mult = { '': 1, k: 1e3, m: 1e6, b: 1e9 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'b'];
  return Math.round(Number(m[1]) * mult);
}

export interface FlagSpec {
  name: string;
  kind: 'bool' | 'negatable' | 'value' | 'count';
  short?: string;
  noEffect?: boolean;
  help: string;
}

export interface ParsedArgs {
  positionals: string[];
  values: Record<string, string | boolean | number>;
  given: string[];
}

export function parseArgs(argv: string[], specs: FlagSpec[]): ParsedArgs {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short!, s]));
  const out: ParsedArgs = { positionals: [], values: {}, given: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.positionals.push(...argv.slice(i + 1));
      break;
    }
    if (/^-[a-zA-Z]+$/.test(a)) {
      for (const ch of a.slice(1)) {
        const s = byShort.get(ch);
        if (!s) throw new ForgeError('bad_flag', `unknown option -${ch}`);
        if (s.kind === 'count') out.values[s.name] = ((out.values[s.name] as number) ?? 0) + 1;
        else if (s.kind === 'value') {
          const v = argv[++i];
          if (v === undefined) throw new ForgeError('bad_flag', `-${ch} needs a value`);
          out.values[s.name] = v;
        } else out.values[s.name] = true;
        out.given.push(s.name);
      }
      continue;
    }
    if (!a.startsWith('--')) {
      out.positionals.push(a);
      continue;
    }
    const [rawName, inline] = a.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    let spec = byName.get(rawName);
    let value: string | boolean | number = true;
    if (!spec && rawName.startsWith('no-')) {
      spec = byName.get(rawName.slice(3));
      if (!spec || spec.kind !== 'negatable') spec = undefined;
      value = false;
    }
    if (!spec) {
      const near = specs.map((s) => s.name).filter((n) => n.startsWith(rawName.slice(0, 4)));
      throw new ForgeError('bad_flag', `unknown option --${rawName}${near.length ? ` (did you mean --${near[0]}?)` : ''}; see --help`);
    }
    if (spec.kind === 'value') {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new ForgeError('bad_flag', `--${spec.name} needs a value`);
      value = v;
    } else if (spec.kind === 'count') value = ((out.values[spec.name] as number) ?? 0) + 1;
    out.values[spec.name] = value;
    out.given.push(spec.name);
  }
  return out;
}
