import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, readdir, rm, stat, symlink } from 'node:fs/promises';
import { truncateSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { openWeights } from '../../libs/model-folder/weights';
import { join } from 'node:path';
import { availableBackends, computeAllHiddenStates, computePromptStates } from '../../libs/forward';
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
    await assert.rejects(computePromptStates(dir, [[1, 2, 3]]), (e: unknown) => {
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

test('the forward pass writes nothing into the model folder, not even for a moment (plain and Hugging Face cache layouts)', async () => {
  await withTemp(async (dir) => {
    const model = join(dir, 'tiny-a');
    await cp(TINY_A, model, { recursive: true });
    const blobs = join(dir, 'blobs'), snap = join(dir, 'snapshots', 'abc');
    await mkdir(blobs, { recursive: true });
    await mkdir(snap, { recursive: true });
    await cp(join(TINY_A, 'model.safetensors'), join(blobs, 'f00d'));
    await symlink(join('..', '..', 'blobs', 'f00d'), join(snap, 'model.safetensors'));
    await cp(join(TINY_A, 'config.json'), join(snap, 'config.json'));
    // A file created and removed again still changes its folder's mtime.
    const look = async (d: string) => ({ files: (await readdir(d)).sort(), mtime: (await stat(d)).mtimeMs, ctime: (await stat(d)).ctimeMs });
    const before = await Promise.all([model, blobs, snap].map(look));
    await new Promise((r) => setTimeout(r, 20)); // a later write would get a later timestamp
    const plain = await computeAllHiddenStates(model, ids);
    const linked = await computeAllHiddenStates(snap, ids);
    assert.deepEqual(await Promise.all([model, blobs, snap].map(look)), before);
    assert.equal(maxAbsDiff(linked[0]![2]!, plain[0]![2]!), 0);
  });
});

test('a weight file cut short while the forward pass runs: the later layer whose read fails names its tensor and file', async () => {
  await withTemp(async (dir) => {
    await writeTinyModel(dir, { ...spec, layers: 4, dtype: 'BF16' });
    const file = join(dir, 'model.safetensors');
    const victim = (await openWeights(dir)).get('model.layers.2.mlp.down_proj.weight');
    // Layer 2's reads start only after layer 0 has run (its buffers are layer 0's): cut the file then.
    await assert.rejects(computePromptStates(dir, [[1, 2, 3]], { onProgress: (p) => {
      if (p.layer === 0) truncateSync(file, victim.offset + 6);
    } }), (e: unknown) => {
      assert.ok(e instanceof ForgeError);
      assert.equal(e.code, 'truncated');
      assert.equal(e.place.tensor, 'model.layers.2.mlp.down_proj.weight');
      assert.equal(e.place.file, file);
      return true;
    });
  });
});

test('the CPU provider is known without loading onnxruntime (a worker set up ahead starts its reads first); other devices still ask it', () => {
  const script = "const b = require('./libs/forward/backend'); const cpu = b.executionProviders('cpu'); const loaded = Object.keys(require.cache).some((f) => f.includes('onnxruntime-node')); " +
    "let other = ''; try { b.executionProviders('cuda'); other = 'available'; } catch (e) { other = e.code; } console.log(JSON.stringify([cpu, loaded, other]));";
  const out = execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { cwd: join(__dirname, '..', '..'), encoding: 'utf8' });
  const [cpu, loaded, other] = JSON.parse(out.trim().split('\n').pop()!) as [string[], boolean, string];
  assert.deepEqual(cpu, ['cpu']);
  assert.equal(loaded, false, 'onnxruntime-node was loaded to list the CPU provider');
  assert.ok(other === 'device_unavailable' || other === 'available', other);
});
