import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { ContentCache } from '../cache';
import { ModelError } from '../errors';
import { progressReporter, type Progress } from '../stages/progress';

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
}

export interface HubSettings {
  cacheDir: string;
  hubUrl: string;
  token: string | undefined;
  offline: boolean;
  fetch: typeof fetch;
  /** No connection, answer or body bytes for this long fails the request (MOE_FORGE_HTTP_TIMEOUT, seconds). */
  timeoutMs: number;
  /** Transient failures (timeouts, resets, 429, 5xx) are retried this many times (MOE_FORGE_HTTP_RETRIES). */
  retries: number;
  progress: ((label: string) => Progress) | null;
}

export const TIMEOUT_ENV = 'MOE_FORGE_HTTP_TIMEOUT';
export const RETRIES_ENV = 'MOE_FORGE_HTTP_RETRIES';
const DEFAULT_TIMEOUT_S = 30;
const DEFAULT_RETRIES = 5;

function envNumber(env: HubEnv, name: string, fallback: number, integer: boolean): number {
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
  const offlineVar = (env.HF_HUB_OFFLINE ?? env.TRANSFORMERS_OFFLINE ?? '').toLowerCase();
  return {
    cacheDir: opts.cacheDir ? resolve(opts.cacheDir) : hubCacheDir(env),
    hubUrl: (opts.hubUrl ?? env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, ''),
    token: opts.token ?? (env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || undefined),
    offline: opts.offline ?? TRUE.has(offlineVar),
    fetch: opts.fetch ?? globalThis.fetch,
    // HF_HUB_DOWNLOAD_TIMEOUT is huggingface_hub's name for the same thing.
    timeoutMs: Math.round(envNumber(env, TIMEOUT_ENV, envNumber(env, 'HF_HUB_DOWNLOAD_TIMEOUT', DEFAULT_TIMEOUT_S, false), false) * 1000),
    retries: envNumber(env, RETRIES_ENV, DEFAULT_RETRIES, true),
    progress: opts.progress === false ? null : (opts.progress ?? ((label) => progressReporter(label))),
  };
}
