/**
 * A GGUF split as llama.cpp's gguf-split makes one (libs/gguf/split.ts): names, split keys, the routers and
 * metadata in the first file, the other tensors in order in files of at most the size asked.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ggufParts, ggufSplitName, ggufLayout, converterOrder, hubSizeWarning, HUB_MAX_FILE_BYTES, type GgufPart } from '../../libs/gguf';
import { alignUp, tensorBytes } from '../../libs/gguf/format';
import { shardsOf } from '../../libs/stages/write-manifest';
import { mixtralPlan } from '../helpers/mixtral-plan';
import { tempDir } from '../helpers/tmp';

const plan = mixtralPlan(tempDir(), { maxShardBytes: 0 });
const byName = new Map(plan.tensors.map((t) => [t.name, t]));
const layout = ggufLayout(plan, converterOrder(shardsOf(plan).map((s) => s.tensors.map((t) => byName.get(t.name)!))), 'f32');
const keys = (p: GgufPart) => Object.fromEntries(p.layout.metadata.filter((k) => k.key.startsWith('split.')).map((k) => [k.key, [k.value.type, k.value.value]]));
const bytes = (p: GgufPart) => p.layout.tensors.reduce((a, t) => a + alignUp(tensorBytes(t.shape, t.type)!, 32), 0);

test('unsplit: one model-TYPE.gguf, the layout as it is', () => {
  const [one, ...rest] = ggufParts(layout, 'f32');
  assert.equal(rest.length, 0);
  assert.equal(one!.file, 'model-f32.gguf');
  assert.equal(one!.layout, layout);
});

test('split: llama.cpp names and keys, routers and metadata first, every tensor once, in order, files within the size', () => {
  assert.equal(ggufSplitName('q8_0', 0, 3), 'model-q8_0-00001-of-00003.gguf');
  const routers = layout.tensors.filter((t) => t.name.includes('ffn_gate_inp')).map((t) => t.name);
  assert.ok(routers.length > 0);
  const others = layout.tensors.filter((t) => !routers.includes(t.name));
  const largest = Math.max(...others.map((t) => alignUp(tensorBytes(t.shape, t.type)!, 32)));
  for (const max of [1, largest, 2 * largest + 1, 1e12]) {
    const parts = ggufParts(layout, 'f32', max);
    const n = parts.length;
    assert.ok(n >= 2, `${max}: ${n} files`);
    parts.forEach((p, i) => {
      assert.equal(p.file, `model-f32-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.gguf`);
      assert.deepEqual(keys(p), { 'split.no': ['u16', i], 'split.count': ['u16', n], 'split.tensors.count': ['i32', layout.tensors.length] });
      // The model's metadata in the first file only.
      assert.equal(p.layout.metadata.length, i === 0 ? layout.metadata.length + 3 : 3);
      if (i > 0) assert.ok(bytes(p) <= max || p.layout.tensors.length === 1, `${max}: file ${i} holds ${bytes(p)} bytes`);
    });
    assert.deepEqual(parts[0]!.layout.tensors.map((t) => t.name), routers);
    assert.deepEqual(parts.slice(1).flatMap((p) => p.layout.tensors.map((t) => t.name)), others.map((t) => t.name));
    // Files as full as the size allows: the next file's first tensor would not have fitted.
    for (let i = 1; i + 1 < n; i++) assert.ok(bytes(parts[i]!) + alignUp(tensorBytes(parts[i + 1]!.layout.tensors[0]!.shape, 'F32')!, 32) > max);
  }
  assert.equal(ggufParts(layout, 'f32', 1e12).length, 2);
  assert.equal(ggufParts(layout, 'f32', 1).length, others.length + 1);
});

test('a split size that is not a positive number of bytes is refused', () => {
  for (const bad of [0, -1, 1.5, NaN]) assert.throws(() => ggufParts(layout, 'f32', bad), /GGUF split size .*: a positive number of bytes is needed/);
});

test('a GGUF file larger than the Hub takes is said, with the option that splits it', () => {
  const [one] = ggufParts(layout, 'bf16');
  assert.equal(hubSizeWarning(one!, HUB_MAX_FILE_BYTES), null);
  assert.equal(hubSizeWarning(one!, 93.4e9), 'model-bf16.gguf is 93.4 GB: the Hugging Face Hub takes no file over 50 GB; --gguf-split-max-size 50g (Nx: ggufSplitMaxSize) splits it into files llama.cpp loads');
  const parts = ggufParts(layout, 'bf16', 50e9);
  assert.equal(hubSizeWarning(parts[1]!, 51e9), 'model-bf16-00002-of-00002.gguf is 51.0 GB, one tensor larger than the split size: the Hugging Face Hub takes no file over 50 GB');
});
