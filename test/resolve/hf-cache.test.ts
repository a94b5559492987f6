import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { mkdtemp, mkdir, copyFile, symlink, writeFile, rm, utimes, cp } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { resolveModel, resolveModels, contentId, contentIdStats, forgetContentHashes, hubCacheDir } from '../../libs/resolve';
import { ContentCache } from '../../libs/cache';
import { nowNs, RACY_NS, sleepUntil } from '../../libs/util/stat-key';

const tinyDir = join(__dirname, '..', 'fixtures', 'tiny-llama', 'tiny-a');
const FILES = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];
const SHA = 'a'.repeat(40);
const temps: string[] = [];
after(async () => {
  for (const d of temps) await rm(d, { recursive: true, force: true });
});
async function temp(prefix: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  temps.push(d);
  return d;
}
const noNetwork = (async () => {
  throw new Error('network used');
}) as unknown as typeof fetch;

/** A cache as huggingface_hub (Python) lays it out: blobs named by hash, relative symlinks, refs/main. */
async function pythonCache(hub: string, repo: string, skip: string[] = []): Promise<string> {
  const storage = join(hub, `models--${repo.replace('/', '--')}`);
  const snap = join(storage, 'snapshots', SHA);
  await mkdir(join(storage, 'blobs'), { recursive: true });
  await mkdir(snap, { recursive: true });
  await mkdir(join(storage, 'refs'), { recursive: true });
  await writeFile(join(storage, 'refs', 'main'), SHA);
  for (const f of FILES) {
    const blob = createHash('sha256').update(readFileSync(join(tinyDir, f))).digest('hex');
    if (!skip.includes(f)) await copyFile(join(tinyDir, f), join(storage, 'blobs', blob));
    await symlink(join('..', '..', 'blobs', blob), join(snap, f));
  }
  return snap;
}

test('a cache laid out by the Python hub library resolves offline (HF_HUB_CACHE and HF_HOME)', async () => {
  const hub = await temp('pyhub-');
  const snap = await pythonCache(hub, 'org/py-model');
  const r = await resolveModel('org/py-model', { env: { HF_HUB_CACHE: hub, HF_HUB_OFFLINE: '1' }, fetch: noNetwork });
  assert.equal(r.source, 'cache');
  assert.equal(r.dir, snap);
  assert.equal(r.revision, SHA);
  assert.equal(r.contentId, await contentId(tinyDir));
  // Online too: a complete snapshot needs no network.
  const online = await resolveModel(`org/py-model@${SHA}`, { env: { HF_HUB_CACHE: hub }, fetch: noNetwork });
  assert.equal(online.dir, snap);

  const home = await temp('hfhome-');
  await cp(hub, join(home, 'hub'), { recursive: true, verbatimSymlinks: true });
  assert.equal(hubCacheDir({ HF_HOME: home }), join(home, 'hub'));
  const viaHome = await resolveModel('org/py-model', { env: { HF_HOME: home, HF_HUB_OFFLINE: '1' }, fetch: noNetwork });
  assert.equal(viaHome.dir, join(home, 'hub', 'models--org--py-model', 'snapshots', SHA));
  assert.equal(hubCacheDir({ XDG_CACHE_HOME: '/x' }), '/x/huggingface/hub');
});

test('a dangling snapshot link counts as missing', async () => {
  const hub = await temp('pyhub-');
  await pythonCache(hub, 'org/partial', ['model.safetensors']);
  await assert.rejects(
    resolveModel('org/partial', { env: { HF_HUB_CACHE: hub, HF_HUB_OFFLINE: '1' } }),
    /HF_HUB_OFFLINE=1 .*org\/partial.*missing model\.safetensors/,
  );
});

test('local folders resolve against the base dir and report where they came from', async () => {
  const [r, again] = await resolveModels(['tiny-llama/tiny-a', './tiny-llama/tiny-a'], { baseDir: join(tinyDir, '..', '..'), env: {}, fetch: noNetwork });
  assert.equal(r!.source, 'local');
  assert.equal(r!.dir, tinyDir);
  assert.equal(r!.revision, null);
  assert.equal(again!.contentId, r!.contentId);
  assert.ok(r!.bytes > 500_000);
});

test('a content-id memo entry moved under another file\'s key is a miss: the id stays the content\'s', async () => {
  const dir = await temp('model-');
  for (const f of FILES) await copyFile(join(tinyDir, f), join(dir, f));
  sleepUntil(nowNs() + RACY_NS); // past the racy window, so the ids are memoised
  const cacheDir = await temp('memo-');
  const id = await contentId(dir, { cache: new ContentCache(cacheDir) });
  // Someone with write access to the cache points every memo key at the next one's content (index lines only).
  const cacache = require('cacache');
  const entries = Object.values(await cacache.ls(cacheDir)) as { key: string; integrity: string; size: number }[];
  const memos = entries.filter((e) => e.key.startsWith('content-id-v2:'));
  assert.equal(memos.length, FILES.length);
  for (const [i, e] of memos.entries()) {
    const other = memos[(i + 1) % memos.length]!;
    await cacache.index.insert(cacheDir, e.key, other.integrity, { size: other.size });
  }
  const h0 = contentIdStats.filesHashed;
  forgetContentHashes(); // as a new process would: to the cache
  assert.equal(await contentId(dir, { cache: new ContentCache(cacheDir) }), id);
  assert.equal(contentIdStats.filesHashed - h0, FILES.length, 'every moved entry is a miss: the files are hashed again');
  // Overwritten: the next call hits again.
  const h1 = contentIdStats.filesHashed;
  assert.equal(await contentId(dir, { cache: new ContentCache(cacheDir) }), id);
  assert.equal(contentIdStats.filesHashed, h1);
});

test('within one process a content id asked again comes from its own memo (the cache emptied meanwhile is not read), until a file\'s stats change', async () => {
  const dir = await temp('model-');
  for (const f of FILES) await copyFile(join(tinyDir, f), join(dir, f));
  sleepUntil(nowNs() + RACY_NS);
  const cacheDir = await temp('memo-');
  const id = await contentId(dir, { cache: new ContentCache(cacheDir) });
  await rm(cacheDir, { recursive: true, force: true }); // a second cache instance would miss everything now
  const h0 = contentIdStats.filesHashed;
  assert.equal(await contentId(dir, { cache: new ContentCache(cacheDir) }), id);
  assert.equal(contentIdStats.filesHashed, h0, 'answered from the process memo');
  // Another cache folder is its own scope: everything is hashed for it.
  assert.equal(await contentId(dir, { cache: new ContentCache(await temp('memo-')) }), id);
  assert.equal(contentIdStats.filesHashed - h0, FILES.length);
  // A changed file (new stats) is looked at again: its new content, a new id.
  const h1 = contentIdStats.filesHashed;
  await writeFile(join(dir, 'config.json'), readFileSync(join(tinyDir, 'config.json'), 'utf8').replace('"llama"', '"llama" '));
  assert.notEqual(await contentId(dir, { cache: new ContentCache(cacheDir) }), id);
  assert.equal(contentIdStats.filesHashed - h1, 1);
});

test('content ids are memoised by path and stat key: a second call reads nothing', async () => {
  const dir = await temp('model-');
  for (const f of FILES) await copyFile(join(tinyDir, f), join(dir, f));
  // Just copied: racy, hashed on every call until a second has passed (test/resolve/content-id.test.ts).
  sleepUntil(nowNs() + RACY_NS);
  const cache = new ContentCache(await temp('memo-'));
  const h0 = contentIdStats.filesHashed;
  const id1 = await contentId(dir, { cache });
  assert.equal(contentIdStats.filesHashed - h0, FILES.length);
  const h1 = contentIdStats.filesHashed;
  const b1 = contentIdStats.bytesHashed;
  const id2 = await contentId(dir, { cache });
  assert.equal(id2, id1);
  assert.equal(contentIdStats.filesHashed, h1, 'memo hit: no file hashed');
  assert.equal(contentIdStats.bytesHashed, b1);
  // A touched file is hashed again (only that one); same bytes, same id.
  await utimes(join(dir, 'config.json'), new Date(), new Date(Date.now() + 5000));
  assert.equal(await contentId(dir, { cache }), id1);
  assert.equal(contentIdStats.filesHashed - h1, 1);
  // Changed content, changed id.
  await writeFile(join(dir, 'config.json'), readFileSync(join(tinyDir, 'config.json'), 'utf8').replace('"llama"', '"llama" '));
  assert.notEqual(await contentId(dir, { cache }), id1);
});
