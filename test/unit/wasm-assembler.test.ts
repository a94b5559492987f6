/** libs/wasm, the assembler the SIMD kernels are built from: its encodings, and a module it builds that runs. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { funcType, get, I32, loop, sleb, uleb, V, V128, wasmApi, wasmModule } from '../../libs/wasm';

test('LEB128 as the WebAssembly spec encodes it', () => {
  assert.deepEqual(uleb(0), [0]);
  assert.deepEqual(uleb(127), [0x7f]);
  assert.deepEqual(uleb(624485), [0xe5, 0x8e, 0x26]);
  assert.deepEqual(sleb(-1), [0x7f]);
  assert.deepEqual(sleb(64), [0xc0, 0x00]);
  assert.deepEqual(sleb(-123456), [0xc0, 0xbb, 0x78]);
});

test('a module of one looped SIMD function: its memory import, export and loop run as written', () => {
  // add1(n, src, dst): dst[i] = src[i] + src[i] for n int32 values, four a round.
  const body = [...get(2), ...get(1), ...V.loadAt(0), ...get(1), ...V.loadAt(0), ...V.add, ...V.storeAt(0)];
  const bytes = wasmModule([funcType([I32, I32, I32])], [{ name: 'twice', type: 0, locals: [[0, V128]], code: loop(0, [[1, 16], [2, 16]], body, 4) }], 1);
  const wa = wasmApi();
  const memory = new wa.Memory({ initial: 1 });
  const twice = new wa.Instance(new wa.Module(bytes), { env: { memory } }).exports.twice as (n: number, src: number, dst: number) => void;
  const src = new Int32Array(memory.buffer, 0, 8);
  src.set([1, -2, 3, 40, 5, 6, -7, 1 << 29]);
  twice(8, 0, 64);
  assert.deepEqual([...new Int32Array(memory.buffer, 64, 8)], [2, -4, 6, 80, 10, 12, -14, 1 << 30]);
  // A memory smaller than the import asks for is refused: the import section carries the page count.
  const big = wasmModule([funcType([I32, I32, I32])], [], 2);
  assert.throws(() => new wa.Instance(new wa.Module(big), { env: { memory } }), /memory/i);
});
