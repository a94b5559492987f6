import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, readlink, lstat, rm } from 'node:fs/promises';
import { readFileSync, existsSync } from 'node:fs';
import { resolveModel, resolveModels, inspectModels, contentId, repoFolderName, type HubEnv } from '../../libs/resolve';
import { readSafetensorsHeader } from '../../libs/safetensors';
import { readBinFile } from '../../libs/pickle';
import { startHubServer, commitFor, type HubServer, type HubRepoSpec } from '../helpers/hub-server';

const fixtures = join(__dirname, '..', 'fixtures');
const tinyDir = join(fixtures, 'tiny-llama', 'tiny-a');
const binDir = join(fixtures, 'tiny-llama-bin', 'tiny-a');
const read = (dir: string, f: string) => readFileSync(join(dir, f));
const tiny = {
  'config.json': read(tinyDir, 'config.json'),
  'tokenizer.json': read(tinyDir, 'tokenizer.json'),
  'tokenizer_config.json': read(tinyDir, 'tokenizer_config.json'),
  'model.safetensors': read(tinyDir, 'model.safetensors'),
};
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const TOKEN = 'hf_gated_secret';

const repos: HubRepoSpec[] = [
  // Extra files a merge does not need: never downloaded.
  { id: 'org/tiny-a', files: { ...tiny, 'README.md': Buffer.from('# tiny'), 'modeling_tiny.py': Buffer.from('import os'), 'pytorch_model.bin': read(binDir, 'pytorch_model.bin') }, revisions: { v1: commitFor('org/tiny-a', 'v1') } },
  { id: 'org/gated', files: tiny, gatedToken: TOKEN },
  { id: 'org/bad-hash', files: tiny, wrongSha256: ['model.safetensors'] },
  { id: 'org/tiny-bin', files: { 'config.json': tiny['config.json'], 'tokenizer.json': tiny['tokenizer.json'], 'pytorch_model.bin': read(binDir, 'pytorch_model.bin') } },
  {
    id: 'org/sharded',
    files: {
      'config.json': tiny['config.json'],
      'model-00001-of-00001.safetensors': tiny['model.safetensors'],
      'model.safetensors.index.json': Buffer.from(JSON.stringify({ metadata: {}, weight_map: Object.fromEntries(readTensorNames().map((n) => [n, 'model-00001-of-00001.safetensors'])) })),
      // A second copy in another layout (as Mistral repos ship): the index does not name it, so it is skipped.
      'consolidated.safetensors': tiny['model.safetensors'],
    },
  },
];

function readTensorNames(): string[] {
  const b = tiny['model.safetensors'];
  const n = Number(b.readBigUInt64LE(0));
  return Object.keys(JSON.parse(b.subarray(8, 8 + n).toString('utf8'))).filter((k) => k !== '__metadata__');
}

let server: HubServer;
const temps: string[] = [];
async function freshCache(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'hf-cache-'));
  temps.push(d);
  return d;
}
const envFor = (cache: string, extra: Record<string, string> = {}): HubEnv => ({ HF_HUB_CACHE: cache, HF_ENDPOINT: server.url, ...extra });
const resolveRequests = (repo: string) => server.requests.filter((r) => r.path.startsWith(`/${repo}/resolve/`));

before(async () => {
  server = await startHubServer(repos);
});
after(async () => {
  await server.close();
  for (const d of temps) await rm(d, { recursive: true, force: true });
});

test('a download lands in the standard cache layout, with only what a merge needs', async () => {
  const cache = await freshCache();
  const r = await resolveModel('org/tiny-a', { env: envFor(cache) });
  const storage = join(cache, repoFolderName('org/tiny-a'));
  const sha = commitFor('org/tiny-a');
  assert.equal(r.source, 'download');
  assert.equal(r.revision, sha);
  assert.equal(r.dir, join(storage, 'snapshots', sha));
  assert.equal((await readFile(join(storage, 'refs', 'main'), 'utf8')).trim(), sha);
  assert.deepEqual((await readdir(r.dir)).sort(), ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
  const link = join(r.dir, 'model.safetensors');
  assert.ok((await lstat(link)).isSymbolicLink());
  assert.equal(await readlink(link), join('..', '..', 'blobs', sha256(tiny['model.safetensors'])));
  assert.ok((await readFile(link)).equals(tiny['model.safetensors']));
  assert.ok(!(await readdir(join(storage, 'blobs'))).some((f) => f.includes('incomplete')));
  // Same content as the local fixture folder, so the same content id.
  assert.equal(r.contentId, await contentId(tinyDir));
  assert.equal(r.bytes, Object.values(tiny).reduce((a, b) => a + b.length, 0));
  assert.equal(r.downloadedBytes, r.bytes);
});

test('a second resolution uses the cache with the server stopped', async () => {
  const own = await startHubServer(repos);
  const cache = await freshCache();
  const env = { HF_HUB_CACHE: cache, HF_ENDPOINT: own.url };
  const first = await resolveModel('org/tiny-a@v1', { env });
  assert.equal(first.source, 'download');
  assert.equal(first.revision, commitFor('org/tiny-a', 'v1'));
  await own.close();
  const second = await resolveModel('org/tiny-a@v1', { env });
  assert.equal(second.source, 'cache');
  assert.equal(second.dir, first.dir);
  assert.equal(second.contentId, first.contentId);
  // Not in the cache, and the hub is gone: a clear error, naming the repo.
  await assert.rejects(resolveModel('org/gated', { env }), /org\/gated.*could not be reached.*HF_HUB_OFFLINE=1/);
});

test('a file whose sha256 does not match the hub metadata is refused and nothing is left behind', async () => {
  const cache = await freshCache();
  await assert.rejects(resolveModel('org/bad-hash', { env: envFor(cache) }), (e: Error) => {
    assert.match(e.message, /model\.safetensors of org\/bad-hash.*sha256 .*refusing the file/);
    return true;
  });
  const storage = join(cache, repoFolderName('org/bad-hash'));
  const blobs = await readdir(join(storage, 'blobs'));
  assert.ok(!blobs.some((b) => b.includes('incomplete')), `no temp files: ${blobs}`);
  assert.ok(!blobs.includes(sha256(tiny['model.safetensors'])) && blobs.length === 3, `only config and tokenizer blobs: ${blobs}`);
  const snap = join(storage, 'snapshots', commitFor('org/bad-hash'));
  assert.ok(!existsSync(join(snap, 'model.safetensors')));
  assert.ok(!(await readdir(snap)).includes('model.safetensors'));
});

test('a gated model needs a token', async () => {
  const cache = await freshCache();
  await assert.rejects(resolveModel('org/gated', { env: envFor(cache) }), (e: Error) => {
    assert.match(e.message, /org\/gated/);
    assert.match(e.message, /token is needed: set HF_TOKEN/);
    return true;
  });
  await assert.rejects(resolveModel('org/gated', { env: envFor(cache, { HF_TOKEN: 'hf_wrong' }) }), /token in HF_TOKEN was refused/);
  const ok = await resolveModel('org/gated', { env: envFor(cache, { HF_TOKEN: TOKEN }) });
  assert.equal(ok.source, 'download');
  const auth = resolveRequests('org/gated').filter((r) => r.status === 200 || r.status === 206);
  assert.ok(auth.length > 0);
});

test('HF_HUB_OFFLINE=1 with a model missing from the cache gives a clear error', async () => {
  const cache = await freshCache();
  let before = server.requests.length;
  await assert.rejects(resolveModel('org/tiny-a@v1', { env: envFor(cache, { HF_HUB_OFFLINE: '1' }) }), (e: Error) => {
    assert.match(e.message, /HF_HUB_OFFLINE=1 forbids downloads/);
    assert.match(e.message, /repo org\/tiny-a, revision v1/);
    assert.match(e.message, /is not in the Hugging Face cache/);
    return true;
  });
  // Only the metadata in the cache (after a header-only inspection): the error lists what is missing.
  assert.equal(server.requests.length, before, 'offline: no request at all');
  await inspectModels(['org/tiny-a'], { env: envFor(cache) });
  before = server.requests.length;
  await assert.rejects(resolveModel('org/tiny-a', { env: envFor(cache, { HF_HUB_OFFLINE: '1' }) }), /is incomplete in the Hugging Face cache .*: missing weights \(model\.safetensors/);
  assert.equal(server.requests.length, before, 'offline: no request at all');
});

test('header-only validation reads configs and tensor headers by small range requests, then weights are fetched', async () => {
  const cache = await freshCache();
  const before = server.requests.length;
  const [a, sharded] = await inspectModels(['org/tiny-a', 'org/sharded'], { env: envFor(cache) });
  const local = await readSafetensorsHeader(join(tinyDir, 'model.safetensors'));
  for (const m of [a!, sharded!]) {
    assert.equal(m.source, 'hub');
    assert.equal(m.weightFormat, 'safetensors');
    assert.deepEqual(m.config, JSON.parse(tiny['config.json'].toString('utf8')));
    assert.equal(m.tensors.size, local.tensors.size);
    for (const t of local.tensors.values()) {
      assert.deepEqual({ dtype: m.tensors.get(t.name)!.dtype, shape: m.tensors.get(t.name)!.shape }, { dtype: t.dtype, shape: t.shape });
    }
  }
  assert.deepEqual(sharded!.weightFiles.map((f) => f.name), ['model-00001-of-00001.safetensors']);
  const weightReqs = server.requests.slice(before).filter((r) => r.path.endsWith('.safetensors'));
  assert.equal(weightReqs.length, 4, 'two range requests per weight file: the length, then the header');
  assert.deepEqual(a!.weightFiles[0]!.header!.headerLength, local.headerLength);
  for (const r of weightReqs) assert.ok(r.range !== null && r.bytes <= local.headerLength, `small range request only: ${JSON.stringify(r)}`);
  const weightBytes = weightReqs.reduce((s, r) => s + r.bytes, 0);
  assert.ok(weightBytes < tiny['model.safetensors'].length / 10, `served ${weightBytes} weight bytes`);
  assert.ok(!server.requests.slice(before).some((r) => r.path.endsWith('consolidated.safetensors')));

  const mark = server.requests.length;
  const resolved = await resolveModels(['org/tiny-a', 'org/sharded', 'org/tiny-a'], { env: envFor(cache) });
  assert.deepEqual(resolved.map((r) => r.source), ['download', 'download', 'download']);
  assert.equal(resolved[2]!.downloadedBytes, 0);
  // The configs fetched during inspection are not fetched again.
  assert.ok(!server.requests.slice(mark).some((r) => r.path.endsWith('config.json') && r.method === 'GET' && r.range === null));
  assert.ok(!existsSync(join(resolved[1]!.dir, 'consolidated.safetensors')));
});

test('a repo with only .bin weights downloads the .bin, and header-only inspection reads its zip directory by ranges', async () => {
  const cache = await freshCache();
  const [ins] = await inspectModels(['org/tiny-bin'], { env: envFor(cache) });
  const local = await readBinFile(join(binDir, 'pytorch_model.bin'));
  assert.equal(ins!.weightFormat, 'bin');
  assert.equal(ins!.tensors.size, local.tensors.length);
  for (const t of local.tensors) assert.deepEqual(ins!.tensors.get(t.name)!.shape, t.shape);
  const r = await resolveModel('org/tiny-bin', { env: envFor(cache) });
  assert.equal(r.weightFormat, 'bin');
  assert.deepEqual((await readdir(r.dir)).sort(), ['config.json', 'pytorch_model.bin', 'tokenizer.json']);
  // The safetensors repo also holds a .bin, which is never fetched.
  assert.ok(!server.requests.some((q) => q.path === '/org/tiny-a/resolve/' + commitFor('org/tiny-a') + '/pytorch_model.bin'));
});

test('a cache disk without room for the weights is refused before their download, naming the cache and the sizes', async (t) => {
  const cache = await freshCache();
  // A small file system of its own (tmpfs; root only): the weights plus the kept margin do not fit.
  const { spawnSync } = await import('node:child_process');
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', cache]).status !== 0) return t.skip('mounting a tmpfs needs root');
  try {
    await assert.rejects(resolveModel('org/tiny-a', { env: envFor(cache) }), /not enough free space to download model org\/tiny-a into the Hugging Face cache .* \(HF_HUB_CACHE\): [\d.]+ kB to download, [\d.]+ (kB|MB) free; free some space or point HF_HUB_CACHE at a larger disk/);
    const blobs = await readdir(join(cache, repoFolderName('org/tiny-a'), 'blobs'));
    assert.ok(!blobs.includes(sha256(tiny['model.safetensors'])), 'no weights downloaded');
    assert.ok(!blobs.some((b) => b.includes('incomplete')), 'no partial download');
  } finally {
    spawnSync('umount', ['-l', cache]);
  }
});

test('weights downloaded (hashed as they were written and checked against the hub) are not read again for the content id; a blob changed since is hashed again', async () => {
  const { ContentCache } = await import('../../libs/cache');
  const { contentIdStats } = await import('../../libs/resolve/content-id');
  const { chmodSync, writeFileSync } = await import('node:fs');
  const cache = await freshCache();
  const memo = new ContentCache(await freshCache());
  const before = contentIdStats.bytesHashed;
  const r = await resolveModel('org/tiny-a', { env: envFor(cache), cache: memo });
  assert.equal(r.source, 'download');
  const weights = tiny['model.safetensors'].length;
  assert.equal(contentIdStats.bytesHashed - before, r.bytes - weights, 'the small files hashed, the downloaded weights not read again');
  assert.equal(r.contentId, await contentId(tinyDir), 'the id the bytes give');
  // The blob damaged in place since (same size): its stat key changed, so the memo misses and the bytes are hashed.
  const blob = join(cache, repoFolderName('org/tiny-a'), 'blobs', sha256(tiny['model.safetensors']));
  const bytes = Buffer.from(tiny['model.safetensors']);
  bytes[bytes.length - 1] ^= 0xff;
  chmodSync(blob, 0o644);
  writeFileSync(blob, bytes);
  const again = contentIdStats.bytesHashed;
  assert.notEqual(await contentId(r.dir, { cache: memo }), r.contentId);
  assert.ok(contentIdStats.bytesHashed - again >= weights, 'the changed blob was hashed');
});
