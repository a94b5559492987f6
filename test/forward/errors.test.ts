import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { availableBackends, computeAllHiddenStates, computePromptStates, type ForwardProgress } from '../../libs/forward';
import { sessionFromFolder } from '../../libs/forward/backend';
import { ForgeError } from '../../libs/errors';
import { writeTinyModel, type TinyModelSpec } from '../../tools/testing/tiny-models';
import { FIXTURES } from '../helpers/forward-fixtures';
import { maxAbsDiff } from '../helpers/forward-reference';

const spec: TinyModelSpec = { modelType: 'llama', hidden: 32, layers: 2, heads: 4, kvHeads: 2, intermediate: 48, vocab: 40 };
const TINY_A = join(FIXTURES, 'tiny-llama', 'tiny-a');
const ids = [[0, 42, 506, 359, 81, 393], [0, 7, 7]];

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'forward-err-'));
  try {
    await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const leftovers = async (dir: string) => (await readdir(dir)).filter((f) => f.startsWith('.moe-forge-layer'));

test('an unavailable device is refused before any work, naming the available backends and the CUDA install option', async (t) => {
  if (availableBackends().includes('cuda')) return t.skip('this install has the CUDA provider');
  await assert.rejects(computePromptStates(TINY_A, [[0, 1]], { device: 'cuda' }), (e: unknown) => {
    assert.ok(e instanceof ForgeError);
    assert.equal(e.code, 'device_unavailable');
    assert.match(e.message, /device "cuda" is not available/);
    assert.match(e.message, /available: cpu/);
    assert.match(e.message, /ONNXRUNTIME_NODE_INSTALL=cuda12/);
    return true;
  });
});

test('an unknown device name lists the known ones', async () => {
  await assert.rejects(computePromptStates(TINY_A, [[0]], { device: 'tpu' as 'cpu' }), /unknown device "tpu" \(expected one of: cpu, cuda, webgpu\)/);
});

test('a missing layer tensor is named together with its file', async () => {
  await withTemp(async (dir) => {
    await writeTinyModel(dir, { ...spec, omit: ['model.layers.1.mlp.up_proj.weight'] });
    await assert.rejects(computePromptStates(dir, [[1, 2, 3]], { weights: 'memory' }), (e: unknown) => {
      assert.ok(e instanceof ForgeError);
      assert.equal(e.place.tensor, 'model.layers.1.mlp.up_proj.weight');
      assert.equal(e.place.file, join(dir, 'model.safetensors'));
      assert.match(e.message, /model\.layers\.1\.mlp\.up_proj\.weight/);
      assert.ok(e.message.includes(join(dir, 'model.safetensors')));
      return true;
    });
  });
});

test('a missing embedding table, a bad token id, an empty prompt and an unknown RoPE type are clear errors', async () => {
  await withTemp(async (dir) => {
    await writeTinyModel(join(dir, 'noemb'), { ...spec, omit: ['model.embed_tokens.weight'] });
    await assert.rejects(computePromptStates(join(dir, 'noemb'), [[1]]), /tensor model\.embed_tokens\.weight/);
    await writeTinyModel(join(dir, 'ok'), spec);
    await assert.rejects(computePromptStates(join(dir, 'ok'), [[1, 40]]), /token id 40 is outside the embedding table \(0\.\.39\)/);
    await assert.rejects(computePromptStates(join(dir, 'ok'), [[1], []]), /prompt 1 has no tokens/);
    await writeTinyModel(join(dir, 'yarn'), { ...spec, ropeScaling: { rope_type: 'yarn', factor: 4 } });
    await assert.rejects(computePromptStates(join(dir, 'yarn'), [[1]]), /rope_type "yarn" is not supported/);
  });
});

test('external data in a writable copy: same states as embedded weights, and no .onnx left behind', async () => {
  await withTemp(async (dir) => {
    const model = join(dir, 'tiny-a');
    await cp(TINY_A, model, { recursive: true });
    const seen = new Set<string>();
    const onProgress = (p: ForwardProgress) => seen.add(p.weights);
    const external = await computeAllHiddenStates(model, ids, { weights: 'external', onProgress });
    assert.deepEqual([...seen], ['external']);
    seen.clear();
    const auto = await computeAllHiddenStates(model, ids, { onProgress });
    assert.deepEqual([...seen], ['external'], 'auto uses external data when the folder is writable');
    seen.clear();
    const memory = await computeAllHiddenStates(TINY_A, ids, { weights: 'memory', onProgress });
    assert.deepEqual([...seen], ['memory']);
    for (let i = 0; i < ids.length; i++) {
      for (let e = 0; e < 3; e++) {
        assert.equal(maxAbsDiff(external[i]![e]!, memory[i]![e]!), 0);
        assert.equal(maxAbsDiff(auto[i]![e]!, memory[i]![e]!), 0);
      }
    }
    assert.deepEqual(await leftovers(model), []);
  });
});

test('symlinked weights (Hugging Face cache layout): the graph goes beside the real file', async () => {
  await withTemp(async (dir) => {
    const blobs = join(dir, 'blobs'), snap = join(dir, 'snapshots', 'abc');
    await mkdir(blobs, { recursive: true });
    await mkdir(snap, { recursive: true });
    await cp(join(TINY_A, 'model.safetensors'), join(blobs, 'f00d'));
    await symlink(join('..', '..', 'blobs', 'f00d'), join(snap, 'model.safetensors'));
    await cp(join(TINY_A, 'config.json'), join(snap, 'config.json'));
    const seen = new Set<string>();
    const linked = await computeAllHiddenStates(snap, ids, { weights: 'external', onProgress: (p) => seen.add(p.weights) });
    assert.deepEqual([...seen], ['external']);
    const memory = await computeAllHiddenStates(TINY_A, ids, { weights: 'memory' });
    assert.equal(maxAbsDiff(linked[0]![2]!, memory[0]![2]!), 0);
    assert.deepEqual(await leftovers(blobs), []);
    assert.deepEqual(await leftovers(snap), []);
  });
});

test('a read-only folder makes the external path give way (the runner then embeds the weights)', async () => {
  const erofs = async () => {
    throw Object.assign(new Error('read-only file system'), { code: 'EROFS' });
  };
  const s = await sessionFromFolder(tmpdir(), new Uint8Array(0), { device: 'cpu', threads: 1 }, erofs);
  assert.equal(s, null);
  const eio = async () => {
    throw Object.assign(new Error('i/o error'), { code: 'EIO' });
  };
  await assert.rejects(sessionFromFolder(tmpdir(), new Uint8Array(0), { device: 'cpu', threads: 1 }, eio), /i\/o error/);
});
