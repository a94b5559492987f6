/**
 * llama3 rope (Llama-3.1/3.2 experts) in a Mixtral GGUF: the rope_freqs.weight tensor llama.cpp's converter
 * generates, bit for bit against the converter's formula recomputed in float32
 * (test/fixtures/gguf/rope-freqs.json, test/fixtures/gguf/record-rope-freqs.py), first in the file as the
 * converter emits it, with no rope scaling keys; and llama.cpp loads and runs such a file: with factors of 1
 * (llama3 rope that changes nothing) it generates transformers' recorded tokens for the unscaled model.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { converterOrder, ggufLayout, llama3RopeFactors, readGguf, readTensorData, shardSource, vocabKeys, writeModelGguf } from '../../libs/gguf';
import { readSafetensorsHeader, SafetensorsWeights } from '../../libs/safetensors';
import type { MergePlan, PlanTensor } from '../../libs/plan';
import { buildRecorded } from '../helpers/gguf-build';
import { readIndex } from '../helpers/gguf-manifest';
import { llamaCppGreedy } from '../helpers/llama-cpp';
import { FIXTURES, tempDir } from '../helpers/tmp';

interface Case {
  config: Record<string, unknown>;
  bits: number[];
}
const fx = JSON.parse(readFileSync(join(FIXTURES, 'gguf', 'rope-freqs.json'), 'utf8')) as { cases: Record<string, Case> };

for (const [name, c] of Object.entries(fx.cases)) {
  test(`rope_freqs of ${name} equals the converter's float32 values bit for bit`, () => {
    const got = llama3RopeFactors(c.config)!;
    assert.ok(got, 'llama3 rope recognised');
    assert.deepEqual([...new Uint32Array(got.buffer, got.byteOffset, got.length)], c.bits);
  });
}

test('no rope_freqs where the rope is not llama3; a bad llama3 parameter is refused naming its field', () => {
  assert.equal(llama3RopeFactors({ hidden_size: 64, num_attention_heads: 4, rope_theta: 10000 }), null);
  assert.equal(llama3RopeFactors({ hidden_size: 64, num_attention_heads: 4, rope_scaling: { rope_type: 'linear', factor: 2 } }), null);
  assert.throws(
    () => llama3RopeFactors({ hidden_size: 64, num_attention_heads: 4, rope_scaling: { rope_type: 'llama3', factor: '8' } }),
    (e: Error) => e.message.includes('rope_scaling.factor must be a finite number, got "8"'),
  );
});

const dir = tempDir('moe-forge-gguf-rope-');

/** Our tiny Mixtral output with llama3 rope put into its config, and its GGUF written as the write stage does. */
async function llama3Mixtral(out: string, rope: Record<string, unknown>): Promise<string> {
  const built = join(dir, 'built');
  if (!readdirSync(dir).includes('built')) await buildRecorded('mixtral', dir, built);
  cpSync(built, out, { recursive: true });
  const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  // transformers 5 writes rope_parameters (the converter reads it before rope_scaling), rope_theta inside.
  if (config.rope_parameters) config.rope_parameters = { ...(config.rope_parameters as object), ...rope };
  else config.rope_scaling = rope;
  writeFileSync(join(out, 'config.json'), JSON.stringify(config, null, 2));
  const files = readdirSync(out).filter((f) => f.endsWith('.safetensors')).sort();
  const shards: PlanTensor[][] = [];
  for (const f of files) shards.push([...(await readSafetensorsHeader(join(out, f))).tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype as never, shape: t.shape, parts: [], group: 'base' })));
  const layout = ggufLayout({ config } as unknown as MergePlan, converterOrder(shards), 'f32');
  const file = join(out, 'model-f32.gguf');
  await writeModelGguf(file, layout, await vocabKeys(out), shardSource(await SafetensorsWeights.openFiles(out, files.map((f) => join(out, f)))));
  return file;
}

test('a llama3-rope Mixtral GGUF: rope_freqs.weight first, F32, [head_dim / 2], no rope scaling keys; llama.cpp runs it', async () => {
  const g = readIndex().outputs.mixtral!.greedy!;
  // Factors of 1 everywhere (factor 1): llama.cpp reads the tensor, and the model is the unscaled one.
  const neutral = await llama3Mixtral(join(dir, 'neutral'), { rope_type: 'llama3', factor: 1.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 });
  const file = await readGguf(neutral);
  const config = JSON.parse(readFileSync(join(dir, 'neutral', 'config.json'), 'utf8')) as Record<string, number>;
  const headDim = config.head_dim ?? config.hidden_size! / config.num_attention_heads!;
  const first = file.tensors[0]!;
  assert.equal(first.name, 'rope_freqs.weight');
  assert.equal(first.type, 'F32');
  assert.deepEqual(first.shape, [headDim / 2]);
  assert.ok(![...file.metadata.keys()].some((k) => k.startsWith('llama.rope.scaling')), 'no rope scaling keys (the converter writes none for llama3)');
  const run = await llamaCppGreedy(neutral, g.prompt, g.input_ids, g.new_tokens.length);
  assert.deepEqual(run.newTokens, g.new_tokens, 'generated tokens');
  // Real scaling (factor 8 over a 16-position original context): it loads and generates.
  const scaled = await llama3Mixtral(join(dir, 'scaled'), { rope_type: 'llama3', factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 16 });
  const factors = llama3RopeFactors(JSON.parse(readFileSync(join(dir, 'scaled', 'config.json'), 'utf8')))!;
  assert.ok(factors.some((v) => v !== 1), 'the scaled case scales');
  const stored = await readGguf(scaled);
  assert.equal(stored.tensors[0]!.name, 'rope_freqs.weight');
  assert.ok((await readTensorData(scaled, stored.tensors[0]!)).equals(Buffer.from(factors.buffer)), 'the stored factors');
  const r2 = await llamaCppGreedy(scaled, g.prompt, g.input_ids, g.new_tokens.length);
  assert.equal(r2.newTokens.length > 0, true);
});
