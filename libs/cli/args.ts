import { ForgeError } from '../errors';
import type { FlagSpec } from '../options';


/** The command line split by the options table's flags (libs/options). */
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
