import { isFloatLiteral, parseJsonLossless, pathKey } from '../../libs/json';

/** A type-preserving view of a JSON document: numbers become `{ int: text }` or `{ float: text }`. */
export function typedJson(text: string): unknown {
  const { value, literals } = parseJsonLossless(text);
  const walk = (v: unknown, path: (string | number)[]): unknown => {
    if (typeof v === 'number') {
      const lit = literals[pathKey(path)]!;
      return isFloatLiteral(lit) ? { float: lit } : { int: lit };
    }
    if (Array.isArray(v)) return v.map((x, n) => walk(x, [...path, n]));
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, walk(x, [...path, k])]));
    return v;
  };
  return walk(value, []);
}

/** Paths (a.b.c) of every number in a typed document, with its kind. */
export function numberKinds(typed: unknown, prefix = ''): Map<string, 'int' | 'float'> {
  const out = new Map<string, 'int' | 'float'>();
  const walk = (v: unknown, p: string) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      const o = v as Record<string, unknown>;
      const keys = Object.keys(o);
      if (keys.length === 1 && (keys[0] === 'int' || keys[0] === 'float') && typeof o[keys[0]] === 'string') return void out.set(p, keys[0] as 'int' | 'float');
      for (const k of keys) walk(o[k], p ? `${p}.${k}` : k);
    } else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${p}[${i}]`));
  };
  walk(typed, prefix);
  return out;
}
