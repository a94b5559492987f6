import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash } from 'node:crypto';

/**
 * A local stand-in for the Hugging Face hub on 127.0.0.1, serving the endpoints @huggingface/hub calls:
 *   GET  /api/models/{repo}/revision/{rev}        model info (sha)
 *   GET  /api/models/{repo}/tree/{rev}[/{path}]    file listing with oids and LFS sha256
 *   POST /api/models/{repo}/paths-info/{rev}       the same for named paths
 *   GET|HEAD /{repo}/resolve/{rev}/{file}          content, with Range, ETag, X-Repo-Commit, X-Linked-Etag/-Size
 * Every request is logged with the bytes of body sent, so tests can check what was fetched. `faults` make it
 * misbehave as real networks do: stall (accept and never answer, or stop mid-body), cut the connection mid-body,
 * or answer an error status.
 */
export interface HubRepoSpec {
  id: string;
  files: Record<string, Buffer>;
  /** Branch or tag -> commit sha; `main` defaults to a sha derived from the id. */
  revisions?: Record<string, string>;
  /** Requests to resolve files must carry `Authorization: Bearer <token>` (a gated model). */
  gatedToken?: string;
  /** Files whose reported LFS sha256 is wrong (the served bytes do not match the metadata). */
  wrongSha256?: string[];
  /** A careless mirror: any unknown revision is answered with main's commit. */
  anyRevision?: boolean;
  /** File content is not served here but redirected (302) to this base URL + the same path (a CDN). */
  redirectTo?: string;
}

/** A misbehaviour for requests whose path (decoded) matches: applied `times` times (default: always). */
export interface HubFault {
  match: RegExp;
  /** stall: never answer (or, with `at`, stop after `at` body bytes); cut: close the connection after `at` body bytes; status: answer it. */
  kind: 'stall' | 'cut' | 'status';
  at?: number;
  status?: number;
  times?: number;
}

export interface HubRequest {
  method: string;
  path: string;
  range: string | null;
  /** The Authorization header as received. */
  authorization: string | null;
  status: number;
  bytes: number;
}

export interface HubServer {
  url: string;
  requests: HubRequest[];
  /** Faults to apply, first match wins; tests may change the list at any time. */
  faults: HubFault[];
  /** Body bytes sent for paths ending with `suffix`. */
  bytesServed(suffix: string): number;
  close(): Promise<void>;
}

const LFS = /\.(safetensors|bin|model|pt|pth|gguf)$/;

interface Entry {
  path: string;
  data: Buffer;
  size: number;
  oid: string;
  lfs: { oid: string; size: number; pointerSize: number } | null;
}

function gitOid(data: Buffer): string {
  return createHash('sha1').update(`blob ${data.length}\0`).update(data).digest('hex');
}

function entriesOf(spec: HubRepoSpec): Map<string, Entry> {
  const m = new Map<string, Entry>();
  for (const [path, data] of Object.entries(spec.files)) {
    let lfs: Entry['lfs'] = null;
    if (LFS.test(path)) {
      let oid = createHash('sha256').update(data).digest('hex');
      if (spec.wrongSha256?.includes(path)) oid = createHash('sha256').update('not the content').digest('hex');
      lfs = { oid, size: data.length, pointerSize: 134 };
    }
    m.set(path, { path, data, size: data.length, oid: gitOid(data), lfs });
  }
  return m;
}

export function commitFor(id: string, salt = ''): string {
  return createHash('sha1').update(`commit:${id}:${salt}`).digest('hex');
}

export async function startHubServer(repos: HubRepoSpec[]): Promise<HubServer> {
  const byId = new Map(repos.map((r) => [r.id, { spec: r, entries: entriesOf(r), revisions: { main: commitFor(r.id), ...r.revisions } as Record<string, string> }]));
  const requests: HubRequest[] = [];
  const faults: HubFault[] = [];

  const takeFault = (path: string): HubFault | null => {
    const f = faults.find((x) => x.match.test(path) && (x.times === undefined || x.times > 0));
    if (f && f.times !== undefined) f.times--;
    return f ?? null;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const log: HubRequest = { method: req.method ?? 'GET', path: url.pathname, range: (req.headers.range as string) ?? null, authorization: req.headers.authorization ?? null, status: 200, bytes: 0 };
    requests.push(log);
    const fault = takeFault(decodeURIComponent(url.pathname));
    if (fault?.kind === 'stall' && fault.at === undefined) return; // accepted, never answered
    const send = (status: number, body: Buffer | string | object, headers: Record<string, string | number> = {}) => {
      log.status = status;
      const isJson = typeof body === 'object' && !Buffer.isBuffer(body);
      const buf = Buffer.isBuffer(body) ? body : Buffer.from(isJson ? JSON.stringify(body) : String(body));
      res.writeHead(status, { 'Content-Type': isJson ? 'application/json' : 'text/plain', 'Content-Length': buf.length, ...headers });
      if (req.method === 'HEAD') return res.end();
      if (fault && (fault.kind === 'cut' || fault.kind === 'stall')) {
        // The announced length is kept: the client sees a body that stops short.
        const part = buf.subarray(0, Math.min(fault.at ?? 0, buf.length));
        log.bytes = part.length;
        res.write(part, () => {
          // Closed a moment after the bytes left, so the client has usually read them all (it may lose the tail).
          if (fault.kind === 'cut') setTimeout(() => res.socket?.destroy(), 500);
        });
        return;
      }
      log.bytes = buf.length;
      res.end(buf);
    };
    if (fault?.kind === 'status') return send(fault.status ?? 503, { error: `injected HTTP ${fault.status ?? 503}` });
    const notFound = (code: string, msg: string) => send(404, { error: msg }, { 'X-Error-Code': code, 'X-Error-Message': msg });

    const isApi = parts[0] === 'api' && parts[1] === 'models';
    const repoId = isApi ? `${parts[2]}/${parts[3]}` : `${parts[0]}/${parts[1]}`;
    const repo = byId.get(repoId);
    if (!repo) return notFound('RepositoryNotFound', 'Repository not found');
    const rest = isApi ? parts.slice(4) : parts.slice(2);
    const rev = rest[1] === 'HEAD' ? 'main' : rest[1] ?? 'main';
    const sha = /^[0-9a-f]{40}$/.test(rev) && Object.values(repo.revisions).includes(rev) ? rev : (repo.revisions[rev] ?? (repo.spec.anyRevision ? repo.revisions.main : undefined));
    if (!sha) return notFound('RevisionNotFound', `Invalid rev id: ${rev}`);
    const listEntry = (e: Entry) => ({ type: 'file', oid: e.oid, size: e.size, path: e.path, ...(e.lfs ? { lfs: e.lfs } : {}) });

    if (isApi && rest[0] === 'revision') {
      return send(200, {
        _id: commitFor(repoId, 'id').slice(0, 24), id: repoId, sha, private: false, gated: repo.spec.gatedToken ? 'manual' : false,
        downloads: 0, likes: 0, lastModified: '2025-01-01T00:00:00.000Z', pipeline_tag: 'text-generation',
        siblings: [...repo.entries.keys()].map((rfilename) => ({ rfilename })),
      });
    }
    if (isApi && rest[0] === 'tree') {
      const prefix = rest.slice(2).join('/');
      const items = [...repo.entries.values()].filter((e) => (prefix ? e.path.startsWith(prefix + '/') : true)).map(listEntry);
      return send(200, items);
    }
    if (isApi && rest[0] === 'paths-info' && req.method === 'POST') {
      const chunks: Buffer[] = [];
      for await (const c of req) chunks.push(c as Buffer);
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { paths: string[]; expand?: boolean };
      const items = body.paths.flatMap((p) => {
        const e = repo.entries.get(p);
        if (!e) return [];
        return [{ ...listEntry(e), ...(body.expand ? { lastCommit: { id: sha, title: 'init', date: '2025-01-01T00:00:00.000Z' }, securityFileStatus: { status: 'safe' } } : {}) }];
      });
      return send(200, items);
    }
    if (!isApi && rest[0] === 'resolve') {
      if (repo.spec.gatedToken && req.headers.authorization !== `Bearer ${repo.spec.gatedToken}`) {
        const msg = `Access to model ${repoId} is restricted. You must have access to it and be authenticated to access it. Please log in.`;
        return send(401, { error: msg }, { 'X-Error-Code': 'GatedRepo', 'X-Error-Message': msg });
      }
      const e = repo.entries.get(rest.slice(2).join('/'));
      if (!e) return notFound('EntryNotFound', 'Entry not found');
      if (repo.spec.redirectTo) return send(302, '', { Location: `${repo.spec.redirectTo}${url.pathname}`, 'X-Repo-Commit': sha });
      const etag = e.lfs ? e.lfs.oid : e.oid;
      const headers: Record<string, string | number> = {
        ETag: `"${etag}"`, 'X-Repo-Commit': sha, 'Accept-Ranges': 'bytes',
        ...(e.lfs ? { 'X-Linked-Etag': `"${e.lfs.oid}"`, 'X-Linked-Size': e.size } : {}),
      };
      const range = req.headers.range;
      if (range) {
        const m = /^bytes=(\d+)-(\d*)$/.exec(range);
        const start = m ? Number(m[1]) : NaN;
        const end = m && m[2] ? Math.min(Number(m[2]), e.size - 1) : e.size - 1;
        if (!m || start > end || start >= e.size) return send(416, '', { 'Content-Range': `bytes */${e.size}` });
        return send(206, e.data.subarray(start, end + 1), { ...headers, 'Content-Type': 'application/octet-stream', 'Content-Range': `bytes ${start}-${end}/${e.size}` });
      }
      return send(200, e.data, { ...headers, 'Content-Type': 'application/octet-stream' });
    }
    return notFound('NotFound', `no route for ${req.method} ${url.pathname}`);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    faults,
    bytesServed: (suffix) => requests.filter((r) => r.path.endsWith(suffix)).reduce((a, r) => a + r.bytes, 0),
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}
