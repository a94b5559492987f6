import { test, before, after, mock } from 'node:test';
import timersPromises = require('node:timers/promises');
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { readFileSync, existsSync, writeFileSync } from 'node:fs';
import { resolveModel, repoFolderName, type HubEnv } from '../../libs/resolve';
import { progressReporter } from '../../libs/util/progress';
import { startHubServer, commitFor, type HubServer, type HubRepoSpec } from '../helpers/hub-server';
import { mergekitMoe } from '../helpers/cli';

const tinyDir = join(__dirname, '..', 'fixtures', 'tiny-llama', 'tiny-a');
const read = (f: string) => readFileSync(join(tinyDir, f));
const tiny = {
  'config.json': read('config.json'),
  'tokenizer.json': read('tokenizer.json'),
  'tokenizer_config.json': read('tokenizer_config.json'),
  'model.safetensors': read('model.safetensors'),
};
const WEIGHTS = tiny['model.safetensors'];
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const MIRROR_TOKEN = 'artifactory-AKCp8k2ZsecretTOKEN';

const repos: HubRepoSpec[] = [
  { id: 'org/mirror', files: tiny, anyRevision: true },
  { id: 'org/evil-list', files: { ...tiny, '../../../evil.safetensors': Buffer.from('x') } },
  { id: 'org/stall', files: tiny },
  { id: 'org/cut', files: tiny },
  { id: 'org/cut-twice', files: tiny },
  { id: 'org/flaky', files: tiny },
  { id: 'org/gated-mirror', files: tiny, gatedToken: MIRROR_TOKEN },
  { id: 'org/progress', files: tiny },
];

let server: HubServer;
const temps: string[] = [];
async function temp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'moe-forge-hubnet-'));
  temps.push(d);
  return d;
}
/** Timeouts long enough for a loaded CI machine; tests of stalls set short ones. */
const envFor = (cache: string, extra: Record<string, string> = {}): HubEnv => ({ HF_HUB_CACHE: cache, HF_ENDPOINT: server.url, MOE_FORGE_HTTP_TIMEOUT: '5', MOE_FORGE_HTTP_RETRIES: '2', ...extra });
const weightGets = (repo: string) => server.requests.filter((r) => r.path.startsWith(`/${repo}/resolve/`) && r.path.endsWith('model.safetensors') && r.method === 'GET');

before(async () => {
  server = await startHubServer(repos);
});
after(async () => {
  await server.close();
  for (const d of temps) await rm(d, { recursive: true, force: true });
});

test('a revision with ".." (or an absolute path, backslash or NUL) touches nothing outside the cache', async () => {
  const root = await temp();
  const cache = join(root, 'cache');
  await mkdir(join(root, 'outside'), { recursive: true });
  const precious = join(root, 'outside', 'file');
  await writeFile(precious, 'precious');
  const before = server.requests.length;
  // The mirror answers any revision, so only our own check stands between the revision and refs/<revision>.
  for (const revision of ['../../../outside/file', 'main/../../../../outside/file', '/etc/passwd', 'a\\..\\..\\b', 'v1\0x']) {
    await assert.rejects(resolveModel({ model: { path: 'org/mirror', revision } }, { env: envFor(cache) }), (e: Error) => {
      assert.match(e.message, /revision .* is not a branch, tag or commit name \(it (climbs out|is an absolute|holds a (backslash|control))/);
      assert.ok(!e.message.includes('\n'));
      return true;
    });
  }
  assert.equal(await readFile(precious, 'utf8'), 'precious');
  assert.deepEqual(await readdir(join(root, 'outside')), ['file']);
  assert.ok(!existsSync(cache), 'nothing written, not even the cache folder');
  assert.equal(server.requests.length, before, 'refused before any request');
  // The same reference as a string, with the hub's answer coming first in the old order of things.
  await assert.rejects(resolveModel('org/mirror@../../../outside/file', { env: envFor(cache) }), /climbs out/);
  assert.equal(await readFile(precious, 'utf8'), 'precious');
  // A legitimate slashed revision (refs/pr/1) still works, stored under refs/ as huggingface_hub stores it.
  const ok = await resolveModel('org/mirror@refs/pr/1', { env: envFor(cache) });
  assert.equal(ok.revision, commitFor('org/mirror'));
  assert.equal((await readFile(join(cache, repoFolderName('org/mirror'), 'refs', 'refs', 'pr', '1'), 'utf8')).trim(), ok.revision);
});

test('a hub whose file list names a path out of the cache is refused with a clear error', async () => {
  const root = await temp();
  const cache = join(root, 'a', 'b', 'cache');
  await assert.rejects(resolveModel('org/evil-list', { env: envFor(cache) }), (e: Error) => {
    assert.match(e.message, /the hub at http:\/\/127\.0\.0\.1:\d+ lists a file named "\.\.\/\.\.\/\.\.\/evil\.safetensors" for org\/evil-list .*refused, it climbs out/);
    return true;
  });
  assert.ok(!existsSync(join(root, 'evil.safetensors')) && !existsSync(join(root, 'a', 'evil.safetensors')));
});

test('a hub that accepts connections and never answers fails within the timeout, naming host and file', { timeout: 30_000 }, async () => {
  const cache = await temp();
  server.faults.push({ match: /org\/stall\/revision/, kind: 'stall' });
  // The waits between attempts, as asked of the timer (libs/resolve/http.ts sleeps through node:timers/promises).
  const sleeps = mock.method(timersPromises, 'setTimeout');
  try {
    await assert.rejects(resolveModel('org/stall', { env: envFor(cache, { MOE_FORGE_HTTP_TIMEOUT: '0.3' }) }), (e: Error) => {
      assert.match(e.message, /^cannot list the files for model org\/stall: no answer from 127\.0\.0\.1:\d+\/api\/models\/org\/stall\/revision\/main within 0\.3 s, 3 attempts; MOE_FORGE_HTTP_TIMEOUT sets the timeout/);
      return true;
    });
  } finally {
    sleeps.mock.restore();
  }
  // 3 attempts of 0.3 s with waits of 0.3 s and 0.6 s between them (the test's timeout stands for undici's 300 s).
  assert.deepEqual(sleeps.mock.calls.map((c) => c.arguments[0]), [300, 600]);
  assert.equal(server.requests.filter((r) => r.path.includes('org/stall/revision')).length, 3);

  // A body that stops mid-way is an idle timeout too; the retry resumes where it stopped.
  server.faults.length = 0;
  const half = Math.floor(WEIGHTS.length / 2);
  server.faults.push({ match: /org\/stall\/resolve\/.*model\.safetensors$/, kind: 'stall', at: half, times: 1 });
  const warnings: string[] = [];
  const r = await resolveModel('org/stall', { env: envFor(cache, { MOE_FORGE_HTTP_TIMEOUT: '1.5' }), warn: (l) => warnings.push(l) });
  assert.ok((await readFile(join(r.dir, 'model.safetensors'))).equals(WEIGHTS));
  assert.deepEqual(weightGets('org/stall').map((q) => q.range), [null, `bytes=${half}-`]);
  assert.equal(warnings.length, 1, warnings.join('\n'));
  assert.match(warnings[0]!, /^127\.0\.0\.1:\d+\/org\/stall\/resolve\/[0-9a-f]{40}\/model\.safetensors stopped sending for 1\.5 s \(attempt 1 of 3\); retrying 2 more times/);
  server.faults.length = 0;
});

test('a silent hub: after the first timeout one warning says what is retried, the attempts and the longest wait left', async () => {
  const cache = await temp();
  server.faults.push({ match: /org\/stall\/revision/, kind: 'stall' });
  const revisionAsks = () => server.requests.filter((q) => q.path.includes('org/stall/revision')).length;
  const asked = revisionAsks();
  const events: string[] = [];
  const warn = (l: string) => events.push(`warning after ${revisionAsks() - asked} request(s): ${l}`);
  await assert.rejects(resolveModel('org/stall', { env: envFor(cache, { MOE_FORGE_HTTP_TIMEOUT: '0.2' }), warn }), (e: Error) => {
    events.push(`error: ${e.message}`);
    return true;
  });
  server.faults.length = 0;
  // Waits of 0.2 s and 0.4 s before the two retries, each retry up to 0.2 s: 1 s at most after the first timeout.
  assert.equal(events.length, 2, events.join('\n'));
  assert.match(events[0]!, /^warning after 1 request\(s\): no answer from 127\.0\.0\.1:\d+\/api\/models\/org\/stall\/revision\/main within 0\.2 s \(attempt 1 of 3\); retrying 2 more times, up to 1 s more if it stays silent \(MOE_FORGE_HTTP_TIMEOUT, MOE_FORGE_HTTP_RETRIES\)$/);
  assert.match(events[1]!, /^error: cannot list the files for model org\/stall: no answer from 127\.0\.0\.1:\d+\/api\/models\/org\/stall\/revision\/main within 0\.2 s, 3 attempts; /);
  assert.equal(revisionAsks() - asked, 3);
});

test('the first-byte timeout is 10 s as in huggingface_hub unless set; a timeout the user set is kept', async () => {
  const { hubSettings } = await import('../../libs/resolve/settings');
  const t = (env: HubEnv) => {
    const s = hubSettings({ env });
    return [s.metadataFirstByteMs, s.firstByteMs, s.timeoutMs];
  };
  assert.deepEqual(t({}), [10_000, 10_000, 30_000]);
  assert.deepEqual(t({ MOE_FORGE_HTTP_TIMEOUT: '45' }), [45_000, 45_000, 45_000]);
  assert.deepEqual(t({ HF_HUB_DOWNLOAD_TIMEOUT: '20' }), [10_000, 20_000, 20_000]);
  assert.deepEqual(t({ HF_HUB_ETAG_TIMEOUT: '3', HF_HUB_DOWNLOAD_TIMEOUT: '20' }), [3_000, 20_000, 20_000]);
  assert.deepEqual(t({ MOE_FORGE_HTTP_TIMEOUT: '45', HF_HUB_ETAG_TIMEOUT: '3' }), [45_000, 45_000, 45_000]);
  // HF_HUB_ETAG_TIMEOUT reaches the hub's API requests.
  server.faults.push({ match: /org\/stall\/revision/, kind: 'stall' });
  const env = { ...envFor(await temp(), { MOE_FORGE_HTTP_RETRIES: '0' }) } as Record<string, string | undefined>;
  delete env.MOE_FORGE_HTTP_TIMEOUT;
  await assert.rejects(resolveModel('org/stall', { env: { ...env, HF_HUB_ETAG_TIMEOUT: '0.2' }, warn: false }), /no answer from 127\.0\.0\.1:\d+\/api\/models\/org\/stall\/revision\/main within 0\.2 s, 1 attempt;/);
  server.faults.length = 0;
});

test('a download cut in the middle resumes with a Range request from the bytes on disk', async () => {
  const cache = await temp();
  const half = Math.floor(WEIGHTS.length / 2);
  server.faults.push({ match: /org\/cut\/resolve\/.*model\.safetensors$/, kind: 'cut', at: half, times: 1 });
  const r = await resolveModel('org/cut', { env: envFor(cache) });
  assert.ok((await readFile(join(r.dir, 'model.safetensors'))).equals(WEIGHTS));
  const gets = weightGets('org/cut');
  assert.deepEqual(gets.map((q) => [q.status, q.range === null]), [[200, true], [206, false]]);
  // It resumes from what reached the disk: at most what was sent before the cut (a closing socket may lose a tail).
  const from = Number(/^bytes=(\d+)-$/.exec(gets[1]!.range!)![1]);
  assert.ok(from > 0 && from <= half, `resumed at ${from} of ${half} sent`);
  assert.equal(gets[0]!.bytes, half);
  assert.equal(gets[1]!.bytes, WEIGHTS.length - from);
  const served = server.bytesServed('org/cut/resolve/' + commitFor('org/cut') + '/model.safetensors');
  assert.ok(served < 2 * WEIGHTS.length, `served ${served}`);
  const blobs = await readdir(join(cache, repoFolderName('org/cut'), 'blobs'));
  assert.ok(blobs.includes(sha256(WEIGHTS)) && !blobs.some((b) => b.includes('incomplete')), `${blobs}`);
});

test('a download that fails for good keeps its partial blob, and the next run resumes it', async () => {
  const cache = await temp();
  const third = Math.floor(WEIGHTS.length / 3);
  server.faults.push({ match: /org\/cut-twice\/resolve\/.*model\.safetensors$/, kind: 'cut', at: third, times: 1 });
  await assert.rejects(resolveModel('org/cut-twice', { env: envFor(cache, { MOE_FORGE_HTTP_RETRIES: '0' }) }), (e: Error) => {
    assert.match(e.message, /^cannot download model\.safetensors for model org\/cut-twice: .*127\.0\.0\.1:\d+\/org\/cut-twice\/resolve\/[0-9a-f]{40}\/model\.safetensors.*1 attempt/);
    assert.ok(!e.message.includes('\n'));
    return true;
  });
  const blobsDir = join(cache, repoFolderName('org/cut-twice'), 'blobs');
  const partial = (await readdir(blobsDir)).filter((b) => b.endsWith('.incomplete'));
  assert.equal(partial.length, 1);
  assert.match(partial[0]!, new RegExp(`^${sha256(WEIGHTS)}\\.\\d+-[0-9a-f]+\\.incomplete$`));
  const kept = readFileSync(join(blobsDir, partial[0]!)).length;
  assert.ok(kept > 0 && kept <= third, `kept ${kept} of ${third} sent`);

  const r = await resolveModel('org/cut-twice', { env: envFor(cache) });
  assert.ok((await readFile(join(r.dir, 'model.safetensors'))).equals(WEIGHTS));
  assert.deepEqual(weightGets('org/cut-twice').map((q) => q.range), [null, `bytes=${kept}-`]);
  const served = server.bytesServed(`/org/cut-twice/resolve/${commitFor('org/cut-twice')}/model.safetensors`);
  assert.ok(served < 2 * WEIGHTS.length, `served ${served} bytes for a ${WEIGHTS.length}-byte file`);
  assert.equal(served, third + WEIGHTS.length - kept);
  assert.deepEqual((await readdir(blobsDir)).filter((b) => b.endsWith('.incomplete')), []);
});

test('429 and 5xx answers are retried with backoff', async () => {
  const cache = await temp();
  server.faults.push({ match: /org\/flaky\/revision/, kind: 'status', status: 503, times: 2 });
  server.faults.push({ match: /org\/flaky\/resolve\/.*model\.safetensors$/, kind: 'status', status: 429, times: 1 });
  const r = await resolveModel('org/flaky', { env: envFor(cache) });
  assert.equal(r.source, 'download');
  assert.deepEqual(server.requests.filter((q) => q.path.includes('org/flaky/revision')).map((q) => q.status), [503, 503, 200]);
  assert.deepEqual(weightGets('org/flaky').map((q) => q.status), [429, 200]);
  // Retries are bounded: a hub that keeps failing gives up with the status, host and what was asked.
  server.faults.push({ match: /org\/flaky\/revision/, kind: 'status', status: 502 });
  await assert.rejects(resolveModel('org/flaky@v2', { env: envFor(await temp(), { MOE_FORGE_HTTP_RETRIES: '1' }) }), /cannot list the files for model org\/flaky@v2: the hub at http:\/\/127\.0\.0\.1:\d+ answered HTTP 502/);
  server.faults.length = 0;
});

test('an HF_TOKEN without the hf_ prefix (a mirror or Artifactory token) opens a gated repo', async () => {
  const cache = await temp();
  const r = await resolveModel('org/gated-mirror', { env: envFor(cache, { HF_TOKEN: MIRROR_TOKEN }) });
  assert.equal(r.source, 'download');
  const files = server.requests.filter((q) => q.path.startsWith('/org/gated-mirror/resolve/'));
  assert.ok(files.length >= 4 && files.every((q) => q.authorization === `Bearer ${MIRROR_TOKEN}` && q.status === 200), JSON.stringify(files));
  await assert.rejects(resolveModel('org/gated-mirror', { env: envFor(await temp(), { HF_TOKEN: 'artifactory-wrong' }) }), /token in HF_TOKEN was refused \(HTTP 401\)/);
});

test('the token is not sent to a host the hub redirects to', async () => {
  const cdn = await startHubServer([{ id: 'org/cdn', files: tiny }]);
  const hub = await startHubServer([{ id: 'org/cdn', files: tiny, redirectTo: cdn.url }]);
  try {
    const r = await resolveModel('org/cdn', { env: { HF_HUB_CACHE: await temp(), HF_ENDPOINT: hub.url, HF_TOKEN: 'hf_secret' } });
    assert.ok((await readFile(join(r.dir, 'model.safetensors'))).equals(WEIGHTS));
    assert.ok(hub.requests.filter((q) => q.path.includes('/resolve/')).every((q) => q.status === 302 && q.authorization === 'Bearer hf_secret'));
    assert.ok(cdn.requests.length >= 4 && cdn.requests.every((q) => q.authorization === null), JSON.stringify(cdn.requests));
  } finally {
    await hub.close();
    await cdn.close();
  }
});

test('downloads report progress (bytes and rate) as the write stage does', async () => {
  const cache = await temp();
  const lines: string[] = [];
  const stream = { isTTY: false, write: (s: string) => lines.push(s) } as unknown as NodeJS.WriteStream;
  await resolveModel('org/progress', { env: envFor(cache), progress: (label) => progressReporter(label, stream, 0) });
  const kb = (WEIGHTS.length / 1e3).toFixed(1);
  assert.ok(lines.some((l) => new RegExp(`^downloading org/progress model\\.safetensors: ${kb} kB/${kb} kB, \\d+\\.\\d MB/s \\(\\d+\\.\\d s\\)\\n$`).test(l)), lines.join(''));
});

test('bad timeout settings are refused, naming the variable', async () => {
  await assert.rejects(resolveModel('org/progress', { env: envFor(await temp(), { MOE_FORGE_HTTP_TIMEOUT: 'soon' }) }), /field MOE_FORGE_HTTP_TIMEOUT: MOE_FORGE_HTTP_TIMEOUT="soon" is not a number of seconds > 0/);
  await assert.rejects(resolveModel('org/progress', { env: envFor(await temp(), { MOE_FORGE_HTTP_RETRIES: '-1' }) }), /MOE_FORGE_HTTP_RETRIES="-1" is not a whole number >= 0/);
});

test('the command line reports a stalled hub in one line with exit code 1', { timeout: 60_000 }, async () => {
  const d = await temp();
  server.faults.push({ match: /org\/stall\/revision/, kind: 'stall' });
  writeFileSync(join(d, 'r.yml'), 'base_model: org/stall\ngate_mode: random\nexperts:\n  - source_model: org/stall\n  - source_model: org/stall\n');
  const env = { HF_HUB_CACHE: join(d, 'hub'), HF_ENDPOINT: server.url, HF_TOKEN: '', HF_HUB_OFFLINE: '', MOE_FORGE_HTTP_TIMEOUT: '0.2', MOE_FORGE_HTTP_RETRIES: '0' };
  const r = await mergekitMoe(['r.yml', 'out', '--i-understand-this-is-not-useful-without-training'], d, env);
  server.faults.length = 0;
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /^error: cannot list the files for model org\/stall: no answer from 127\.0\.0\.1:\d+\/api\/models\/org\/stall\/revision\/main within 0\.2 s, 1 attempt; MOE_FORGE_HTTP_TIMEOUT sets the timeout/);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.ok(!existsSync(join(d, 'out')));
});

test('the command line warns after the first timeout, before the error', { timeout: 60_000 }, async () => {
  const d = await temp();
  server.faults.push({ match: /org\/stall\/revision/, kind: 'stall' });
  writeFileSync(join(d, 'r.yml'), 'base_model: org/stall\ngate_mode: random\nexperts:\n  - source_model: org/stall\n  - source_model: org/stall\n');
  const env = { HF_HUB_CACHE: join(d, 'hub'), HF_ENDPOINT: server.url, HF_TOKEN: '', HF_HUB_OFFLINE: '', MOE_FORGE_HTTP_TIMEOUT: '0.2', MOE_FORGE_HTTP_RETRIES: '1' };
  const r = await mergekitMoe(['r.yml', 'out', '--i-understand-this-is-not-useful-without-training'], d, env);
  server.faults.length = 0;
  assert.equal(r.exitCode, 1, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 2, r.stderr);
  assert.match(lines[0]!, /^WARNING: no answer from 127\.0\.0\.1:\d+\/api\/models\/org\/stall\/revision\/main within 0\.2 s \(attempt 1 of 2\); retrying 1 more time, up to 0\.4 s more if it stays silent/);
  assert.match(lines[1]!, /^error: cannot list the files for model org\/stall: no answer from 127\.0\.0\.1:\d+\/api\/models\/org\/stall\/revision\/main within 0\.2 s, 2 attempts;/);
});

test('a cache that cannot be written gives one line naming the path, not a stack trace', async () => {
  const d = await temp();
  await writeFile(join(d, 'not-a-folder'), 'x');
  const cache = join(d, 'not-a-folder', 'hub');
  await assert.rejects(resolveModel('org/progress', { env: envFor(cache) }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'cache_unwritable');
    assert.match(e.message, /^cannot store model org\/progress in the Hugging Face cache .*not-a-folder\/hub \(HF_HUB_CACHE\): a file stands where a folder should be \(ENOTDIR, mkdir .*not-a-folder/);
    return true;
  });
});

test('an answer far larger than asked for is refused', async () => {
  // A range request for a safetensors header answered with more bytes than asked: the read stops at the limit.
  const { remoteRangeSource } = await import('../../libs/resolve/hub');
  const { hubSettings } = await import('../../libs/resolve/settings');
  const s = hubSettings({ env: envFor(await temp()) });
  const snap = { repo: 'org/progress', sha: commitFor('org/progress'), files: new Map() };
  const src = remoteRangeSource(snap, { path: 'model.safetensors', size: WEIGHTS.length, sha256: null, gitOid: null }, s, 'org/progress');
  assert.ok((await src.read(0, 8)).equals(WEIGHTS.subarray(0, 8)));
  server.faults.push({ match: /org\/progress\/resolve/, kind: 'status', status: 206, times: 1 });
  await assert.rejects(src.read(0, 8), /model\.safetensors of org\/progress at http:\/\/127\.0\.0\.1:\d+, bytes 0-7: the answer is larger than 8 bytes; refusing it/);
});

test('a partial left by an earlier run whose bytes are wrong is downloaded again from zero', async () => {
  const cache = await temp();
  const blobsDir = join(cache, repoFolderName('org/progress'), 'blobs');
  await mkdir(blobsDir, { recursive: true });
  // A dead writer's partial (pid 2**22 + 1 is above Linux's pid limit) holding wrong bytes.
  const stale = join(blobsDir, `${sha256(WEIGHTS)}.${2 ** 22 + 1}-0badc0de.incomplete`);
  await writeFile(stale, Buffer.alloc(1000, 7));
  const before = weightGets('org/progress').length;
  const r = await resolveModel('org/progress', { env: envFor(cache) });
  assert.ok((await readFile(join(r.dir, 'model.safetensors'))).equals(WEIGHTS));
  assert.deepEqual(weightGets('org/progress').slice(before).map((q) => q.range), ['bytes=1000-', null]);
  assert.deepEqual((await readdir(blobsDir)).filter((b) => b.endsWith('.incomplete')), []);
});
