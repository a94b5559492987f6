/** The Nx option `gguf` does what `--gguf` does: the build writes model-TYPE.gguf; a bad type fails on the schema. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';
import { readGguf } from '../../libs/gguf';

const ws = throwawayWorkspace('moe-forge-ws-gguf-');
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
addRecipe(ws, 'r', `base_model: ../../models/tiny-a
gate_mode: random
experts:
  - source_model: ../../models/tiny-b
  - source_model: ../../models/tiny-c
`);

test('nx run r:build --gguf=q8_0 writes the GGUF beside the safetensors; --ggufOnly without them; --ggufSplitMaxSize in split files; a bad type is refused', async () => {
  const r = await nx(ws, ['run', 'r:build', '--gguf=q8_0']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const file = join(ws, 'dist', 'models', 'r', 'model-q8_0.gguf');
  const g = await readGguf(file);
  assert.equal(g.metadata.get('general.architecture')?.value, 'llama');
  assert.equal(g.metadata.get('llama.expert_count')?.value, 2);
  assert.ok(g.tensors.some((t) => t.name === 'blk.0.ffn_gate_exps.weight' && t.type === 'Q8_0'));
  assert.ok(existsSync(join(ws, 'dist', 'models', 'r', 'config.json')));
  const only = await nx(ws, ['run', 'r:build', '--gguf=f16', '--ggufOnly']);
  assert.equal(only.exitCode, 0, only.stdout + only.stderr);
  assert.ok(existsSync(join(ws, 'dist', 'models', 'r', 'model-f16.gguf')));
  assert.ok(!existsSync(join(ws, 'dist', 'models', 'r', 'model-q8_0.gguf')));
  assert.ok(!existsSync(join(ws, 'dist', 'models', 'r', 'model.safetensors')) && !existsSync(join(ws, 'dist', 'models', 'r', 'model-00001-of-00003.safetensors')));
  // Split (and GGUF only): llama.cpp's split files, the routers and metadata in the first.
  const split = await nx(ws, ['run', 'r:build', '--gguf=f16', '--ggufOnly', '--ggufSplitMaxSize=20k']);
  assert.equal(split.exitCode, 0, split.stdout + split.stderr);
  const files = readdirSync(join(ws, 'dist', 'models', 'r')).filter((f) => f.endsWith('.gguf')).sort();
  assert.ok(files.length >= 3 && files.every((f, i) => f === `model-f16-${String(i + 1).padStart(5, '0')}-of-${String(files.length).padStart(5, '0')}.gguf`), files.join(', '));
  const head = await readGguf(join(ws, 'dist', 'models', 'r', files[0]!));
  assert.equal(head.metadata.get('split.count')?.value, files.length);
  assert.ok(head.tensors.every((t) => t.name.includes('ffn_gate_inp')));
  const bad = await nx(ws, ['run', 'r:build', '--gguf=q4_k']);
  assert.notEqual(bad.exitCode, 0);
  assert.match(bad.stdout + bad.stderr, /gguf/);
});
