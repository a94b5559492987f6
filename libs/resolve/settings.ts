import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { ContentCache } from '../cache';
import { ModelError } from '../errors';
import { progressReporter, type Progress } from '../util';

/** The Hugging Face environment variables we honour, read from an explicit env (tests pass their own). */
export type HubEnv = Readonly<Record<string, string | undefined>>;

export interface ResolveOptions {
  /** Relative local paths are resolved against this (default: the working directory). */
  baseDir?: string;
  /** Where HF_* variables are read (default: process.env). */
  env?: HubEnv;
  /** Overrides of what env gives. */
  cacheDir?: string;
  hubUrl?: string;
  token?: string;
  offline?: boolean;
  /** Network access goes through this (default: global fetch). */
  fetch?: typeof fetch;
  /** Memo for content ids; without it every id is computed from the bytes. */
  cache?: ContentCache;
  /** Download progress, one reporter per file (default: a bar on stderr); false: none. */
  progress?: ((label: string) => Progress) | false;
  /** A request about to be retried after a timeout, one line (default: a WARNING line on stderr); false: none. */
  warn?: ((line: string) => void) | false;
}

export interface HubSettings {
  cacheDir: string;
  hubUrl: string;
  token: string | undefined;
  offline: boolean;
  fetch: typeof fetch;
  /** No connection and answer for this long fails a download's request (MOE_FORGE_HTTP_TIMEOUT, seconds). */
  firstByteMs: number;
  /** The same for the hub's API and other small answers (huggingface_hub's HF_HUB_ETAG_TIMEOUT). */
  metadataFirstByteMs: number;
  /** No body bytes for this long, once the answer has begun, fails the request. */
  timeoutMs: number;
  /** Transient failures (timeouts, resets, 429, 5xx) are retried this many times (MOE_FORGE_HTTP_RETRIES). */
  retries: number;
  progress: ((label: string) => Progress) | null;
  warn: ((line: string) => void) | null;
  /** The content-id memo, told the sha256 of each weight file downloaded (verified as it was written). */
  contentCache?: ContentCache;
}

export const TIMEOUT_ENV = 'MOE_FORGE_HTTP_TIMEOUT';
export const RETRIES_ENV = 'MOE_FORGE_HTTP_RETRIES';
// As huggingface_hub: a hub that accepted the connection and stays silent is known within 10 s. A body that
// has begun may pause longer (a slow mirror, a CDN refilling) before it counts as stalled.
const DEFAULT_FIRST_BYTE_S = 10;
const DEFAULT_TIMEOUT_S = 30;
const DEFAULT_RETRIES = 5;

function envNumber(env: HubEnv, name: string, fallback: number, integer: boolean): number;
function envNumber(env: HubEnv, name: string, fallback: undefined, integer: boolean): number | undefined;
function envNumber(env: HubEnv, name: string, fallback: number | undefined, integer: boolean): number | undefined {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < 0 || (integer && !Number.isInteger(v)) || (!integer && v === 0)) {
    throw new ModelError('bad_env', `${name}=${JSON.stringify(raw)} is not ${integer ? 'a whole number >= 0' : 'a number of seconds > 0'}`, { field: name });
  }
  return v;
}

const TRUE = new Set(['1', 'true', 'yes', 'on']);

/** As huggingface_hub: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub (XDG_CACHE_HOME respected). */
export function hubCacheDir(env: HubEnv = process.env): string {
  if (env.HF_HUB_CACHE) return resolve(env.HF_HUB_CACHE);
  if (env.HF_HOME) return resolve(env.HF_HOME, 'hub');
  const xdg = env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return resolve(xdg, 'huggingface', 'hub');
}

export function hubSettings(opts: ResolveOptions = {}): HubSettings {
  const env = opts.env ?? process.env;
  // A timeout the user set is kept for every wait; HF_HUB_DOWNLOAD_TIMEOUT and HF_HUB_ETAG_TIMEOUT are
  // huggingface_hub's names for the downloads' and the metadata's.
  const mine = envNumber(env, TIMEOUT_ENV, undefined, false);
  const download = mine ?? envNumber(env, 'HF_HUB_DOWNLOAD_TIMEOUT', undefined, false);
  const metadata = mine ?? envNumber(env, 'HF_HUB_ETAG_TIMEOUT', undefined, false);
  const offlineVar = (env.HF_HUB_OFFLINE ?? env.TRANSFORMERS_OFFLINE ?? '').toLowerCase();
  return {
    cacheDir: opts.cacheDir ? resolve(opts.cacheDir) : hubCacheDir(env),
    hubUrl: (opts.hubUrl ?? env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, ''),
    token: opts.token ?? (env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || undefined),
    offline: opts.offline ?? TRUE.has(offlineVar),
    fetch: opts.fetch ?? globalThis.fetch,
    firstByteMs: Math.round((download ?? DEFAULT_FIRST_BYTE_S) * 1000),
    metadataFirstByteMs: Math.round((metadata ?? DEFAULT_FIRST_BYTE_S) * 1000),
    timeoutMs: Math.round((download ?? DEFAULT_TIMEOUT_S) * 1000),
    retries: envNumber(env, RETRIES_ENV, DEFAULT_RETRIES, true),
    progress: opts.progress === false ? null : (opts.progress ?? ((label) => progressReporter(label))),
    warn: opts.warn === false ? null : (opts.warn ?? ((line) => process.stderr.write(`WARNING: ${line}\n`))),
    ...(opts.cache ? { contentCache: opts.cache } : {}),
  };
}
