import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsWeights, readTensorBytes } from '../../libs/safetensors';
import { mergekitMoe } from '../helpers/cli';
import { manifest } from '../helpers/manifest';
import { FIXTURES, tempDir } from '../helpers/tmp';

const PARITY = join(FIXTURES, 'parity');
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function shas(dir: string): Promise<Map<string, string>> {
  const w = await SafetensorsWeights.openFolder(dir);
  const out = new Map<string, string>();
  for (const n of w.names()) out.set(n, sha(await readTensorBytes(w.get(n))));
  return out;
}

for (const name of ['mixtral-random-noise', 'mixtral-uniform-noise-bf16']) {
  test(`--rng torch --random-seed 42 reproduces the reference's ${name} merge bit for bit, in both layouts`, async () => {
    const d = tempDir();
    const fused = join(d, 'fused');
    const r = await mergekitMoe([`${name}.yml`, fused, '--rng', 'torch', '--random-seed', '42', '--layout', 'fused'], PARITY);
    assert.equal(r.exitCode, 0, r.stderr);
    const m = manifest(`${name}.fused.manifest.json`);
    const got = await shas(fused);
    assert.deepEqual([...got.keys()].sort(), Object.keys(m.tensors).sort());
    for (const [t, want] of Object.entries(m.tensors)) assert.equal(got.get(t), want.sha256, `${t} is not the reference's`);

    // Classic layout: the same tensors, rearranged (gate_up_proj[e] = [w1; w3], down_proj[e] = w2).
    const classic = join(d, 'classic');
    assert.equal((await mergekitMoe([`${name}.yml`, classic, '--rng', 'torch', '--random-seed', '42'], PARITY)).exitCode, 0);
    const wf = await SafetensorsWeights.openFolder(fused);
    const wc = await SafetensorsWeights.openFolder(classic);
    for (let l = 0; l < 2; l++) {
      assert.equal(sha(await readTensorBytes(wc.get(`model.layers.${l}.block_sparse_moe.gate.weight`))), m.tensors[`model.layers.${l}.mlp.gate.weight`]!.sha256);
      const gu = await readTensorBytes(wf.get(`model.layers.${l}.mlp.experts.gate_up_proj`));
      const down = await readTensorBytes(wf.get(`model.layers.${l}.mlp.experts.down_proj`));
      for (let e = 0; e < 3; e++) {
        const w = async (k: string) => readTensorBytes(wc.get(`model.layers.${l}.block_sparse_moe.experts.${e}.${k}.weight`));
        const [w1, w2, w3] = [await w('w1'), await w('w2'), await w('w3')];
        const per = w1.length + w3.length;
        assert.ok(Buffer.concat([w1, w3]).equals(gu.subarray(e * per, (e + 1) * per)), `layer ${l} expert ${e} w1/w3`);
        assert.ok(w2.equals(down.subarray(e * w2.length, (e + 1) * w2.length)), `layer ${l} expert ${e} w2`);
      }
    }
    for (const t of Object.keys(m.tensors).filter((t) => !t.includes('.mlp.'))) assert.equal((await shas(classic)).get(t), m.tensors[t]!.sha256, t);
  });
}

test('under --rng torch an edit redraws what the reference would: later noise follows earlier draws', async () => {
  const d = tempDir();
  const src = readFileSync(join(PARITY, 'mixtral-random-noise.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, join(FIXTURES, 'tiny-llama'));
  // Expert 1 loses its noise: expert 2's draws now start earlier in the generator's sequence.
  const edited = src.replace('    noise_scale: 0.01\n', '');
  assert.notEqual(edited, src);
  writeFileSync(join(d, 'a.yml'), src);
  writeFileSync(join(d, 'b.yml'), edited);
  const build = async (recipe: string, out: string, rng: string) => {
    const r = await mergekitMoe([recipe, join(d, out), '--rng', rng, '--random-seed', '42'], d);
    assert.equal(r.exitCode, 0, r.stderr);
    return shas(join(d, out));
  };
  const e2 = 'model.layers.1.block_sparse_moe.experts.2.w1.weight';
  const e1 = 'model.layers.1.block_sparse_moe.experts.1.w1.weight';
  const [ta, tb] = [await build('a.yml', 'ta', 'torch'), await build('b.yml', 'tb', 'torch')];
  assert.notEqual(ta.get(e2), tb.get(e2), 'torch: expert 2 noise moved with the draws before it');
  assert.notEqual(ta.get(e1), tb.get(e1));
  assert.equal(ta.get('model.layers.0.block_sparse_moe.gate.weight'), tb.get('model.layers.0.block_sparse_moe.gate.weight'), 'routers come first');
  const [sa, sb] = [await build('a.yml', 'sa', 'stream'), await build('b.yml', 'sb', 'stream')];
  assert.equal(sa.get(e2), sb.get(e2), 'stream: expert 2 keeps its own stream');
  assert.notEqual(sa.get(e2), ta.get(e2));
});

test('--rng takes stream or torch only', async () => {
  const r = await mergekitMoe(['mixtral-random-noise.yml', join(tempDir(), 'o'), '--rng', 'numpy'], PARITY);
  assert.equal(r.exitCode, 1);
  assert.match(r.stderr, /error: .*--rng must be stream or torch, got "numpy"/);
});
