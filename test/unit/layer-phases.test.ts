import { test } from 'node:test';
import assert from 'node:assert/strict';
import { layerPhases, pieces, rowSlice, type LayerTensor } from '../../libs/forward/layer-graph';

const tensor = (role: string, shape: number[], offset: number): LayerTensor => {
  const byteLength = shape.reduce((a, b) => a * b, 2);
  // A header of 1000 bytes before the data section: begin/end are offsets within it.
  return { role, loc: { name: `model.layers.0.${role}`, file: '/m/model.safetensors', dtype: 'BF16', shape, offset, byteLength, begin: offset - 1000, end: offset - 1000 + byteLength } };
};

/** Mistral-7B's layer 0 as stored (bf16): offsets one after another. */
function mistralLayer(): Map<string, LayerTensor> {
  const H = 4096, I = 14336, KV = 1024;
  const shapes: [string, number[]][] = [['ln1', [H]], ['ln2', [H]], ['q', [H, H]], ['k', [KV, H]], ['v', [KV, H]], ['o', [H, H]], ['gate', [I, H]], ['up', [I, H]], ['down', [H, I]]];
  let at = 1000;
  const out = new Map<string, LayerTensor>();
  for (const [role, shape] of shapes) {
    const t = tensor(role, shape, at);
    out.set(role, t);
    at += t.loc.byteLength;
  }
  return out;
}

test('pieces: as few as fit, of equal size where a count up to twice that divides the rows, covering every row once', () => {
  assert.deepEqual(pieces(14336, 4096), [[0, 3584], [3584, 7168], [7168, 10752], [10752, 14336]]);
  assert.deepEqual(pieces(4096, 2340), [[0, 2048], [2048, 4096]]);
  // 7 rows in pieces of at most 3: no count from 3 to 6 divides 7, so 3 uneven pieces.
  assert.deepEqual(pieces(7, 3), [[0, 3], [3, 6], [6, 7]]);
  assert.deepEqual(pieces(5, 0), [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5]], 'at least one row a piece');
});

test('layerPhases: a 7B layer runs its attention, 4 pieces of gate/up channels and 2 of down_proj rows; a small one runs whole', () => {
  const layer = mistralLayer();
  const phases = layerPhases(layer, 128 << 20);
  assert.deepEqual(phases.map((p) => p.kind), ['attention', 'up', 'up', 'up', 'up', 'down', 'down']);
  assert.deepEqual([...phases[0]!.tensors.keys()], ['ln1', 'ln2', 'q', 'k', 'v', 'o']);
  const up = phases[2]!;
  assert.equal(up.kind, 'up');
  // Channels 3584..7168: those rows of gate and up, contiguous in the file.
  const gate = up.tensors.get('gate')!.loc;
  assert.deepEqual(gate.shape, [3584, 4096]);
  assert.equal(gate.offset, layer.get('gate')!.loc.offset + 3584 * 4096 * 2);
  assert.equal(gate.byteLength, 3584 * 4096 * 2);
  assert.deepEqual([gate.begin, gate.end], [gate.offset - 1000, gate.offset - 1000 + gate.byteLength]);
  const down = phases[6]!.tensors.get('down')!.loc;
  assert.deepEqual(down.shape, [2048, 14336]);
  assert.equal(down.offset, layer.get('down')!.loc.offset + 2048 * 14336 * 2);
  // Every piece's float32 weights within the budget.
  for (const p of phases.slice(1)) assert.ok([...p.tensors.values()].reduce((a, t) => a + 2 * t.loc.byteLength, 0) <= 128 << 20, p.kind);
  // TinyLlama's MLP (138 MB of float32) is under twice the default piece: whole.
  const tiny = new Map([...layer].map(([r, t]) => [r, tensor(r, t.loc.shape.map((d) => (d === 14336 ? 5632 : d === 4096 ? 2048 : d === 1024 ? 256 : d)), 1000)]));
  assert.deepEqual(layerPhases(tiny, 128 << 20).map((p) => p.kind), ['whole']);
});

test('rowSlice: rows outside the tensor are refused, naming it', () => {
  const t = tensor('gate', [10, 4], 0);
  assert.deepEqual(rowSlice(t, 2, 5).loc.shape, [3, 4]);
  assert.throws(() => rowSlice(t, 5, 11), /rows 5\.\.11 outside 0\.\.10 of model\.layers\.0\.gate/);
  assert.throws(() => rowSlice(t, 3, 3), /rows 3\.\.3 outside/);
});
