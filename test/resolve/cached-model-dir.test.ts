import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cachedModelDir } from '../../libs/resolve';
import { copyModel, tempDir, TINY } from '../helpers/tmp';

const SHA = 'a'.repeat(40);

/** org/tiny as the Hugging Face cache holds it: refs/main naming a snapshot with the model's files. */
function cached(hub: string): string {
  const repo = join(hub, 'models--org--tiny');
  mkdirSync(join(repo, 'refs'), { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), SHA);
  return copyModel(TINY('a'), join(repo, 'snapshots', SHA));
}

test('cachedModelDir: the folder fetch would take without the network (a local folder, or a complete snapshot at the cached ref), else null', async () => {
  const d = tempDir();
  const hub = join(d, 'hub');
  const env = { HF_HUB_CACHE: hub };
  assert.equal(await cachedModelDir(TINY('b'), { baseDir: d, env }), TINY('b'), 'a local folder is itself');
  assert.equal(await cachedModelDir('org/tiny', { baseDir: d, env }), null, 'not in the cache: fetch downloads it');
  const snap = cached(hub);
  assert.equal(await cachedModelDir('org/tiny', { baseDir: d, env }), snap);
  assert.equal(await cachedModelDir({ model: { path: 'org/tiny', revision: SHA } }, { baseDir: d, env }), snap, 'a commit names its snapshot');
  assert.equal(await cachedModelDir({ model: { path: 'org/tiny', revision: 'v2' } }, { baseDir: d, env }), null, 'a ref the cache does not have');
  assert.equal(await cachedModelDir({ model: { path: 'org/tiny', revision: '../../x' } }, { baseDir: d, env }), null, 'an unsafe revision (fetch refuses it)');
  rmSync(join(snap, 'model.safetensors'));
  assert.equal(await cachedModelDir('org/tiny', { baseDir: d, env }), null, 'an incomplete snapshot: fetch completes it');
});
