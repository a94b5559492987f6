import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import type { ContentCache } from '../cache';

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
}

export interface HubSettings {
  cacheDir: string;
  hubUrl: string;
  token: string | undefined;
  offline: boolean;
  fetch: typeof fetch;
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
  };
}
