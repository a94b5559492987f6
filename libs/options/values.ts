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
export function checkShardSize(value: unknown, flag = '--out-shard-size', min = 0): number {
  const n = typeof value === 'number' ? value : parseKmb(String(value), flag);
  if (!Number.isSafeInteger(n) || n < min) throw new ForgeError('bad_flag', `must be a number of bytes from ${min} to ${MAX} (k, m, b or g suffixes allowed), got ${shown(value)}`, { field: flag });
  return n;
}

/** The reference's parse_kmb: digits, optionally with a k/m/b suffix (×10³, ×10⁶, ×10⁹); g as b, as llama.cpp's tools write sizes. */
export function parseKmb(text: string, flag = '--out-shard-size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMbBgG]?)\s*$/.exec(text);
  if (!m) throw new ForgeError('bad_flag', `${flag} expects a number with an optional k, m, b or g suffix (e.g. 500m, 5B, 20g), got "${text}"`, { field: flag });
  const mult = { '': 1, k: 1e3, m: 1e6, b: 1e9, g: 1e9 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'b' | 'g'];
  return Math.round(Number(m[1]) * mult);
}
