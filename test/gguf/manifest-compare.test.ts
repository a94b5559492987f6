/**
 * The comparison the conformance tests rely on finds and names every kind of difference: a key's value, a missing
 * or extra key, a long array's content, a tensor's bytes, shape, type, a missing tensor. Files are written by our
 * GGUF writer and read back by our reader, as in the conformance tests.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { readGguf } from '../../libs/gguf/reader';
import { writeGguf } from '../../libs/gguf/writer';
import type { GgufKv } from '../../libs/gguf/types';
import { metadataDifferences, toManifestKv, tensorDifferences, type ManifestTensor } from '../helpers/gguf-manifest';
import { tempDir } from '../helpers/tmp';

const dir = tempDir('moe-forge-gguf-compare-');
const tokens = Array.from({ length: 40 }, (_, i) => `tok${i}`);
const KVS: GgufKv[] = [
  { key: 'general.architecture', value: { type: 'string', value: 'llama' } },
  { key: 'llama.rope.freq_base', value: { type: 'f32', value: 10000 } },
  { key: 'tokenizer.ggml.tokens', value: { type: 'array', itemType: 'string', value: tokens } },
  { key: 'tokenizer.ggml.bos_token_id', value: { type: 'u32', value: 0 } },
];
const data = Buffer.from(Float32Array.from({ length: 64 }, (_, i) => i / 7).buffer);
async function* bytes(b: Buffer) {
  yield b;
}

test('equal files compare equal; each changed key and tensor is named', async () => {
  const file = join(dir, 'a.gguf');
  await writeGguf(file, KVS, [{ name: 'w', shape: [8, 8], type: 'F32', bytes: () => bytes(data) }]);
  const g = await readGguf(file);
  const manifest = KVS.map((kv) => toManifestKv(kv.key, kv.value));
  const tensors: ManifestTensor[] = [{ name: 'w', shape: [8, 8], type: 'F32', bytes: data.length, sha256: createHash('sha256').update(data).digest('hex') }];
  const all = () => true;
  assert.deepEqual(metadataDifferences(g.metadata, manifest, all), []);
  assert.deepEqual(await tensorDifferences(file, g, tensors), []);

  const changed = manifest.map((m) => (m.key === 'tokenizer.ggml.bos_token_id' ? { ...m, value: 1 } : m));
  assert.deepEqual(metadataDifferences(g.metadata, changed, all), ['key tokenizer.ggml.bos_token_id: {"key":"tokenizer.ggml.bos_token_id","type":"u32","value":0}, the converter writes {"key":"tokenizer.ggml.bos_token_id","type":"u32","value":1}']);
  const otherTokens = toManifestKv('tokenizer.ggml.tokens', { type: 'array', itemType: 'string', value: tokens.map((t, i) => (i === 39 ? 'x' : t)) });
  const d = metadataDifferences(g.metadata, manifest.map((m) => (m.key === otherTokens.key ? otherTokens : m)), all);
  assert.equal(d.length, 1);
  assert.match(d[0]!, /^key tokenizer\.ggml\.tokens: /);
  assert.deepEqual(metadataDifferences(g.metadata, [...manifest, { key: 'x.y', type: 'u32', value: 1 }], all), ['key x.y: missing (the converter writes {"key":"x.y","type":"u32","value":1})']);
  assert.deepEqual(metadataDifferences(g.metadata, manifest.slice(1), all), ['key general.architecture: written, but the converter does not write it']);
  assert.deepEqual(metadataDifferences(g.metadata, manifest.slice(1), (k) => !k.startsWith('general.')), []);

  const t0 = tensors[0]!;
  assert.match((await tensorDifferences(file, g, [{ ...t0, sha256: '0'.repeat(64) }]))[0]!, /^tensor w: bytes differ/);
  assert.deepEqual(await tensorDifferences(file, g, [{ ...t0, shape: [4, 16] }]), ['tensor w: shape [8,8], the converter writes [4,16]']);
  assert.deepEqual(await tensorDifferences(file, g, [{ ...t0, type: 'F16' }]), ['tensor w: type F32, the converter writes F16']);
  assert.deepEqual(await tensorDifferences(file, g, [t0, { ...t0, name: 'v' }]), ['tensor v: missing']);
});
