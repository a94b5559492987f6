import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import { join, relative } from 'node:path';
import { FIXTURES, ROOT, tempDir } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace, TINY_BF16_RECIPE } from '../helpers/workspace';

// Debian's nginx-light + libnginx-mod-http-lua (.ci/run installs them when missing).
const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => existsSync(p));
const LUA = ['/usr/lib/nginx/modules', '/usr/share/nginx/modules'].map((d) => join(d, 'ngx_http_lua_module.so')).find((p) => existsSync(p));
const missing = !NGINX ? 'nginx is not installed (apt-get install nginx-light libnginx-mod-http-lua)' : !LUA ? 'the nginx lua module is not installed (apt-get install libnginx-mod-http-lua)' : null;
// CI installs them: there a missing server is a failure, not a skip.
if (missing && process.env.MOE_FORGE_REQUIRE_NGINX === '1') throw new Error(`remote cache test: ${missing}`);

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

async function startNginx(): Promise<{ url: string; store: string }> {
  const dir = tempDir('moe-forge-nginx-');
  const store = join(dir, 'store');
  mkdirSync(join(store, 'v1', 'cache'), { recursive: true });
  mkdirSync(join(dir, 'tmp'));
  const port = await freePort();
  const modules = join(LUA!, '..');
  const me = userInfo();
  const conf = `
${me.uid === 0 ? 'user root root;' : ''}
load_module ${join(modules, 'ndk_http_module.so')};
load_module ${LUA};
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 64; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/tmp;
  proxy_temp_path ${dir}/tmp;
  fastcgi_temp_path ${dir}/tmp;
  uwsgi_temp_path ${dir}/tmp;
  scgi_temp_path ${dir}/tmp;
  server {
    listen 127.0.0.1:${port};
    set $nx_cache_root ${store};
    set $nx_cache_token "test-token";
    include ${join(ROOT, 'tools', 'remote-cache', 'nx-cache.conf')};
  }
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  const child = spawn(NGINX!, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  after(() => {
    child.kill('SIGTERM');
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`nginx exited: ${stderr}`);
    try {
      const r = await fetch(`${url}/v1/cache/none`, { headers: { authorization: 'Bearer test-token' } });
      if (r.status === 404) return { url, store };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nginx did not start: ${stderr}`);
}

function files(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string) => {
    for (const f of readdirSync(d)) {
      const p = join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

const recipe = TINY_BF16_RECIPE;

test('the nginx config speaks the protocol Nx 24 expects: 200 stored, 409 exists, 404 miss, 401 text/plain', { skip: missing ?? false }, async () => {
  const { url } = await startNginx();
  const auth = { authorization: 'Bearer test-token' };
  assert.equal((await fetch(`${url}/v1/cache/abc`, { method: 'PUT', headers: auth, body: 'x' })).status, 200);
  assert.equal((await fetch(`${url}/v1/cache/abc`, { method: 'PUT', headers: auth, body: 'y' })).status, 409);
  const got = await fetch(`${url}/v1/cache/abc`, { headers: auth });
  assert.equal(got.status, 200);
  assert.equal(await got.text(), 'x');
  assert.equal((await fetch(`${url}/v1/cache/other`, { headers: auth })).status, 404);
  const denied = await fetch(`${url}/v1/cache/abc`, { headers: { authorization: 'Bearer wrong' } });
  assert.equal(denied.status, 401);
  assert.match(denied.headers.get('content-type') ?? '', /^text\/plain/);
});

test('a second workspace at another path builds from the remote cache: every cacheable stage a remote hit, the model folder byte-identical', { skip: missing ?? false }, async () => {
  const { url, store } = await startNginx();
  const env = { NX_SELF_HOSTED_REMOTE_CACHE_SERVER: url, NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN: 'test-token' };
  const make = (prefix: string) => {
    const ws = throwawayWorkspace(prefix);
    cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
    addRecipe(ws, 'shared', recipe);
    return ws;
  };
  const first = make('moe-forge-ws-first-');
  const second = make('moe-forge-ws-elsewhere-');
  const a = await nx(first, ['run', 'shared:build'], env);
  assert.equal(a.exitCode, 0, a.stdout + a.stderr);
  assert.ok(readdirSync(join(store, 'v1', 'cache')).length >= 5, 'the first build stored its tasks');
  const b = await nx(second, ['run', 'shared:build'], env);
  assert.equal(b.exitCode, 0, b.stdout + b.stderr);
  for (const stage of ['check-options', 'fetch', 'embed-prompts', 'build-gates', 'assemble-experts']) {
    assert.match(b.stdout, new RegExp(`nx run shared:${stage}\\s+\\[remote cache\\]`), `${stage} is a remote hit:\n${b.stdout}`);
  }
  // write's cache entries hold a token of the workspace that stored them: here it runs and writes the folder.
  assert.doesNotMatch(b.stdout, /nx run shared:write\s+\[remote cache\]/);
  const x = files(join(first, 'dist', 'models', 'shared'));
  const y = files(join(second, 'dist', 'models', 'shared'));
  assert.deepEqual([...y.keys()].sort(), [...x.keys()].sort());
  for (const [f, bytes] of x) assert.ok(bytes.equals(y.get(f)!), `${f} is byte-identical`);
  // Nothing restored from the cache names where the first workspace lay.
  for (const stage of ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts']) {
    for (const [f, bytes] of files(join(second, 'dist', 'stages', 'shared', stage))) assert.ok(!bytes.includes(first), `${stage}/${f} does not name the first workspace`);
  }

  // The server down: Nx 24 stops at the first task it has to look up; NX_SKIP_REMOTE_CACHE=true builds locally.
  const down = { ...env, NX_SELF_HOSTED_REMOTE_CACHE_SERVER: `http://127.0.0.1:${await freePort()}` };
  const aborted = await nx(second, ['run', 'shared:build', '--random-seed=5'], down);
  assert.notEqual(aborted.exitCode, 0, 'Nx stops when the remote cache cannot be reached');
  assert.match(aborted.stdout + aborted.stderr, /Failed to send request/);
  const skip = await nx(second, ['run', 'shared:build', '--random-seed=5'], { ...down, NX_SKIP_REMOTE_CACHE: 'true' });
  assert.equal(skip.exitCode, 0, skip.stdout + skip.stderr);
  assert.match(skip.stdout, /nx run shared:embed-prompts\s+\[local cache\]/);
  // Options reach a stage through its slice (the recipe stage's), so its header names none; not a cache hit.
  assert.match(skip.stdout, /nx run shared:assemble-experts\s*\n/, 'the stage a new seed changes runs');
});
