import { setTimeout as sleep } from 'node:timers/promises';
import { ModelError } from '../errors';
import { RETRIES_ENV, TIMEOUT_ENV, type HubSettings } from './settings';

/** Network access counted per process, so tests and the CLI can report what a run fetched. */
export const hubStats = { requests: 0, bytesDownloaded: 0, retries: 0 };

/** Nothing came (no connection, no answer, or no body bytes) for the configured time. */
export class HttpTimeout extends Error {}

/** An answer worth asking again for (429, 5xx). */
export class TransientStatus extends Error {
  constructor(
    readonly status: number,
    readonly retryAfterMs: number | null,
    where: string,
  ) {
    super(`${where} answered HTTP ${status}`);
  }
}

/** The retries are used up; the message names the host and path, the last failure and the attempts made. */
export class NetworkGaveUp extends Error {
  constructor(
    message: string,
    readonly last: unknown,
  ) {
    super(message);
  }
}

/** Server-provided text made safe for a one-line message (no newlines or terminal escapes, bounded). */
export function oneLine(text: string, max = 300): string {
  // eslint-disable-next-line no-control-regex
  const t = text.replace(/[\x00-\x1f\x7f-\x9f]+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max)}…` : t;
}

/** `host/path` of a URL, for messages. */
export function urlPlace(url: string): string {
  try {
    const u = new URL(url);
    return oneLine(decodeURIComponent(`${u.host}${u.pathname}`));
  } catch {
    return oneLine(url);
  }
}

const seconds = (ms: number) => `${+(ms / 1000).toFixed(3)} s`;

/** Request headers with the token added for the hub's own origin (fetch drops it on a redirect elsewhere). */
export function hubHeaders(s: HubSettings, url: string, extra?: ConstructorParameters<typeof Headers>[0]): Headers {
  const h = new Headers(extra);
  if (s.token && !h.has('authorization')) {
    try {
      if (new URL(url).origin === new URL(s.hubUrl).origin) h.set('authorization', `Bearer ${s.token}`);
    } catch {
      // A URL we cannot parse gets no token.
    }
  }
  return h;
}

/**
 * One request under two timeouts: connecting and the answer's headers must come within s.firstByteMs, each piece
 * of the body after that within s.timeoutMs. A timeout rejects with HttpTimeout (from fetch, or from reading the body).
 */
export async function timedRequest(s: HubSettings, url: string, init: RequestInit = {}): Promise<Response> {
  const ctrl = new AbortController();
  const place = urlPlace(url);
  const aborted = new Promise<never>((_, reject) => ctrl.signal.addEventListener('abort', () => reject(ctrl.signal.reason), { once: true }));
  aborted.catch(() => undefined);
  const timeoutError = (e: unknown) => (ctrl.signal.aborted && ctrl.signal.reason instanceof HttpTimeout ? ctrl.signal.reason : e);
  let timer = setTimeout(() => ctrl.abort(new HttpTimeout(`no answer from ${place} within ${seconds(s.firstByteMs)}`)), s.firstByteMs);
  let res: Response;
  try {
    hubStats.requests++;
    // The race also covers a custom fetch that ignores the signal.
    res = await Promise.race([s.fetch(url, { ...init, signal: ctrl.signal }), aborted]);
  } catch (e) {
    throw timeoutError(e);
  } finally {
    clearTimeout(timer);
  }
  if (!res.body) return res;
  const reader = res.body.getReader();
  const body = new ReadableStream<Uint8Array>(
    {
      async pull(c) {
        timer = setTimeout(() => ctrl.abort(new HttpTimeout(`${place} stopped sending for ${seconds(s.timeoutMs)}`)), s.timeoutMs);
        try {
          const r = await Promise.race([reader.read(), aborted]);
          if (r.done) c.close();
          else c.enqueue(r.value);
        } catch (e) {
          c.error(timeoutError(e));
          reader.cancel().catch(() => undefined);
        } finally {
          clearTimeout(timer);
        }
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
  const out = new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
  Object.defineProperty(out, 'url', { value: res.url });
  return out;
}

const TRANSIENT_CODES = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH', 'ENETDOWN', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CLOSED']);

export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 429 || status === 500 || status === 502 || status === 503 || status === 504;
}

/** Worth a retry: timeouts, dropped connections, 429/5xx. A refused connection or unknown host is not. */
export function isTransient(e: unknown): boolean {
  if (e instanceof HttpTimeout || e instanceof TransientStatus || e instanceof ShortBody) return true;
  const err = e as { code?: string; cause?: { code?: string; message?: string }; message?: string } | null;
  const code = err?.cause?.code ?? err?.code;
  if (code && TRANSIENT_CODES.has(code)) return true;
  // undici: a body cut off mid-way rejects with TypeError('terminated').
  return e instanceof TypeError && /terminated|other side closed|socket/i.test(`${err?.message} ${err?.cause?.message ?? ''}`);
}

/** The body ended before the length the answer announced. */
export class ShortBody extends Error {}

export function retryAfterMs(res: Response): number | null {
  const v = res.headers.get('retry-after');
  if (!v) return null;
  const n = Number(v);
  if (Number.isFinite(n)) return Math.max(0, n * 1000);
  const t = Date.parse(v);
  return Number.isFinite(t) ? Math.max(0, t - Date.now()) : null;
}

/** The wait before retry number `n` (1-based): 1 s (or the timeout, if shorter), doubling, at most 30 s; Retry-After wins up to 60 s. */
function backoffMs(s: HubSettings, n: number, e: unknown): number {
  const base = Math.min(1000, s.firstByteMs);
  const ms = Math.min(base * 2 ** (n - 1), 30_000);
  return e instanceof TransientStatus && e.retryAfterMs !== null ? Math.min(e.retryAfterMs, 60_000) : ms;
}

export async function backoff(s: HubSettings, n: number, e: unknown): Promise<void> {
  hubStats.retries++;
  await sleep(backoffMs(s, n, e));
}

/**
 * After a request's first timeout, one line saying what is retried and how long the retries may take if the hub
 * stays silent: without it a hung hub is minutes of nothing before the error. `failures`: failed attempts so far.
 * True once a timeout was seen (said or not): the caller says it once per request.
 */
export function retryNotice(s: HubSettings, e: unknown, failures: number): boolean {
  if (!(e instanceof HttpTimeout)) return false;
  if (!s.warn) return true;
  let worst = 0;
  for (let n = failures; n <= s.retries; n++) worst += backoffMs(s, n, e) + s.firstByteMs;
  const left = s.retries - failures + 1;
  s.warn(`${e.message} (attempt ${failures} of ${s.retries + 1}); retrying ${left} more time${left === 1 ? '' : 's'}, up to ${seconds(worst)} more if it stays silent (${TIMEOUT_ENV}, ${RETRIES_ENV})`);
  return true;
}

/** The settings for metadata requests (the API, ETags, headers read by range): their own first-byte timeout. */
export function forMetadata(s: HubSettings): HubSettings {
  return { ...s, firstByteMs: s.metadataFirstByteMs };
}

function describe(e: unknown, url: string): string {
  if (e instanceof HttpTimeout || e instanceof TransientStatus || e instanceof ShortBody) return e.message;
  const err = e as { code?: string; cause?: { code?: string; message?: string }; message?: string };
  const why = [err?.cause?.message ?? err?.message, err?.cause?.code ?? err?.code].filter(Boolean).join(', ');
  return `the connection to ${urlPlace(url)} broke (${oneLine(why || String(e))})`;
}

export function gaveUp(e: unknown, url: string, attempts: number): NetworkGaveUp {
  const what = describe(e, url);
  const where = what.includes(urlPlace(url)) ? '' : ` (${urlPlace(url)})`;
  const hint = e instanceof HttpTimeout ? `; ${TIMEOUT_ENV} sets the timeout in seconds` : '';
  return new NetworkGaveUp(`${what}${where}, ${attempts} attempt${attempts === 1 ? '' : 's'}${hint}`, e);
}

/**
 * A request with retries: transient failures while connecting, on a 429/5xx answer, or while `use` reads the
 * answer are tried again (up to s.retries more times, with backoff). `use` gets every other answer.
 */
export async function requestWithRetries<T>(s: HubSettings, url: string, init: RequestInit, use: (res: Response) => Promise<T>): Promise<T> {
  let warned = false;
  for (let attempt = 1; ; attempt++) {
    try {
      const res = await timedRequest(s, url, { ...init, headers: hubHeaders(s, url, init.headers) });
      if (isTransientStatus(res.status)) {
        await res.body?.cancel().catch(() => undefined);
        throw new TransientStatus(res.status, retryAfterMs(res), urlPlace(url));
      }
      return await use(res);
    } catch (e) {
      if (!isTransient(e)) throw e;
      if (attempt > s.retries) throw gaveUp(e, url, attempt);
      if (!warned) warned = retryNotice(s, e, attempt);
      await backoff(s, attempt, e);
    }
  }
}

/** A body read whole, refusing one longer than `max` bytes (a hub answer is small; a broken or hostile one may not be). */
export async function readCapped(res: Response, max: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  if (!res.body) return Buffer.alloc(0);
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    n += chunk.length;
    if (n > max) {
      await res.body.cancel().catch(() => undefined);
      throw new ModelError('hub_answer_too_large', `${what}: the answer is larger than ${max} bytes; refusing it`);
    }
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
}

const MAX_API_ANSWER = 256 << 20;

/**
 * The fetch handed to @huggingface/hub: token for the hub's origin (any token, not only `hf_` ones), timeouts,
 * retries, and the body read within the retry loop (its answers are small JSON). A 429/5xx that outlasts the
 * retries is returned as is, so the client reports it.
 */
export function hubFetch(s: HubSettings): typeof fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    const method = (init?.method ?? 'GET').toUpperCase();
    const retry = method === 'GET' || method === 'HEAD' || (method === 'POST' && /\/paths-info\//.test(url));
    const once = { ...forMetadata(s), retries: retry ? s.retries : 0 };
    try {
      return await requestWithRetries(once, url, init ?? {}, async (res) => {
        const buf = res.body ? await readCapped(res, MAX_API_ANSWER, urlPlace(url)) : null;
        const out = new Response(buf && res.status !== 204 && res.status !== 304 ? buf : null, { status: res.status, statusText: res.statusText, headers: res.headers });
        Object.defineProperty(out, 'url', { value: res.url });
        return out;
      });
    } catch (e) {
      if (e instanceof NetworkGaveUp && e.last instanceof TransientStatus) {
        return new Response(null, { status: e.last.status, statusText: 'gave up after retries' });
      }
      throw e;
    }
  }) as typeof fetch;
}
