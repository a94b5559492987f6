/**
 * The gates' float64 loops (hiddenRows, each layer's Gram matrix) as WebAssembly: they run once per command, and JavaScript
 * spent ~40 ms of a one-prompt edit's tail in them before its optimising compiler (~10 ms a function on these VMs)
 * caught up; compiled WebAssembly runs them in a few ms from the first call. Scalar float64 arithmetic in the same
 * order as the JavaScript (WebAssembly's f64 operations are IEEE's, never fused), so the same bits.
 */
import { F64, funcType, get, I32, i32c as i32, set, wasmApi, wasmModule, type Code, type WasmMemory } from '../wasm';

const f64 = (v: number): Code => [0x44, ...new Uint8Array(new Float64Array([v]).buffer)];
const add = [0x6a], mul = [0x6c], shl = [0x74];
const f64Load = [0x2b, 0, 0], f32Load = [0x2a, 0, 0], f64Store = [0x39, 0, 0], f32Store = [0x38, 0, 0];
const promote = [0xbb], demote = [0xb6], fadd = [0xa0], fsub = [0xa1], fmul = [0xa2], fdiv = [0xa3], fsqrt = [0x9f], fmax = [0xa5], fromI32 = [0xb7];
/** `addr + i * size` (i32). */
const at = (addr: Code, i: Code, log2: number): Code => [...addr, ...i, ...i32(log2), ...shl, ...add];
/** for (v = from; v < to; v++) body */
const loop = (v: number, from: Code, to: Code, body: Code): Code => [...from, ...set(v), 0x02, 0x40, 0x03, 0x40, ...get(v), ...to, 0x4e, 0x0d, 1, ...body, ...get(v), ...i32(1), ...add, ...set(v), 0x0c, 0, 0x0b, 0x0b];
const ifElse = (cond: Code, then: Code, otherwise: Code): Code => [...cond, 0x04, 0x40, ...then, 0x05, ...otherwise, 0x0b];

// rows(P, Q, H, L, avg, inP, padP, pcP, tPos, tNeg, accP, outP): see hiddenRowsWasm.
const R = { P: 0, Q: 1, H: 2, L: 3, avg: 4, inP: 5, padP: 6, pcP: 7, tPos: 8, tNeg: 9, accP: 10, outP: 11 };
const RL = { l: 12, s: 13, p: 14, k: 15, n: 16, base: 17, acc: 18, row: 19, T: 20, pc: 21, sq: 22, d: 23 };
const rowsCode = (): Code => {
  const { P, Q, H, L, avg, inP, padP, pcP, tPos, tNeg, accP, outP } = R;
  const { l, s, p, k, n, base, acc, row, T, pc, sq, d } = RL;
  const accAt = (kk: Code) => at(get(acc), kk, 3);
  const sets = [...get(Q), ...i32(0), 0x4a /* gt_s */, ...i32(1), ...add]; // 2 with negatives, else 1
  const onePrompt = [
    // row = inP + (((base + p) * L + l) * H) * 4
    ...at(get(inP), [...get(base), ...get(p), ...add, ...get(L), ...mul, ...get(l), ...add, ...get(H), ...mul], 2), ...set(row),
    ...ifElse(
      get(avg),
      [
        ...at(get(pcP), [...get(base), ...get(p), ...add], 3), ...f64Load, ...set(pc),
        // acc[k] = acc[k] + (row[k] + pc * pad[l][k]) / T
        ...loop(k, i32(0), get(H), [
          ...accAt(get(k)),
          ...accAt(get(k)), ...f64Load,
          ...at(get(row), get(k), 2), ...f32Load, ...promote,
          ...get(pc), ...at(get(padP), [...get(l), ...get(H), ...mul, ...get(k), ...add], 2), ...f32Load, ...promote, ...fmul,
          ...fadd, ...get(T), ...fdiv, ...fadd, ...f64Store,
        ]),
      ],
      // acc[k] = acc[k] + row[k]
      loop(k, i32(0), get(H), [...accAt(get(k)), ...accAt(get(k)), ...f64Load, ...at(get(row), get(k), 2), ...f32Load, ...promote, ...fadd, ...f64Store]),
    ),
  ];
  const oneSet = [
    // set 0: the positives (prompts 0..P), set 1: the negatives (P..P+Q)
    ...ifElse(get(s), [...get(Q), ...set(n), ...get(P), ...set(base), ...get(tNeg), ...set(T)], [...get(P), ...set(n), ...i32(0), ...set(base), ...get(tPos), ...set(T)]),
    ...at(get(accP), [...get(s), ...get(H), ...mul], 3), ...set(acc),
    ...loop(k, i32(0), get(H), [...accAt(get(k)), ...f64(0), ...f64Store]),
    ...loop(p, i32(0), get(n), onePrompt),
    ...loop(k, i32(0), get(H), [...accAt(get(k)), ...accAt(get(k)), ...f64Load, ...get(n), ...fromI32, ...fdiv, ...f64Store]),
  ];
  const v = (kk: Code) => at(get(accP), kk, 3);
  const neg = (kk: Code) => at(get(accP), [...get(H), ...kk, ...add], 3);
  return loop(l, i32(0), get(L), [
    ...loop(s, i32(0), sets, oneSet),
    ...ifElse([...get(Q), ...i32(0), 0x4a], loop(k, i32(0), get(H), [...v(get(k)), ...v(get(k)), ...f64Load, ...neg(get(k)), ...f64Load, ...fsub, ...f64Store]), []),
    ...f64(0), ...set(sq),
    ...loop(k, i32(0), get(H), [...get(sq), ...v(get(k)), ...f64Load, ...v(get(k)), ...f64Load, ...fmul, ...fadd, ...set(sq)]),
    ...get(sq), ...fsqrt, ...f64(1e-8), ...fmax, ...set(d),
    ...loop(k, i32(0), get(H), [...at(get(outP), [...get(l), ...get(H), ...mul, ...get(k), ...add], 2), ...v(get(k)), ...f64Load, ...get(d), ...fdiv, ...demote, ...f32Store]),
  ]);
};

// grams(Rn, H, L, dataP, outP): out[l][i][j] = Σ_k data[l][i][k] * data[l][j][k] (i <= j, mirrored).
const G = { R: 0, H: 1, L: 2, dataP: 3, outP: 4, l: 5, i: 6, j: 7, k: 8, a: 9, b: 10, s: 11 };
const gramsCode = (): Code => {
  const { R: Rn, H, L, dataP, outP, l, i, j, k, a, b, s } = G;
  const rowAt = (r: number) => at(get(dataP), [...get(l), ...get(Rn), ...mul, ...get(r), ...add, ...get(H), ...mul], 2);
  const outAt = (x: number, y: number) => at(get(outP), [...get(l), ...get(Rn), ...mul, ...get(x), ...add, ...get(Rn), ...mul, ...get(y), ...add], 3);
  return loop(l, i32(0), get(L), loop(i, i32(0), get(Rn), [
    ...rowAt(i), ...set(a),
    ...loop(j, get(i), get(Rn), [
      ...rowAt(j), ...set(b),
      ...f64(0), ...set(s),
      ...loop(k, i32(0), get(H), [...get(s), ...at(get(a), get(k), 2), ...f32Load, ...promote, ...at(get(b), get(k), 2), ...f32Load, ...promote, ...fmul, ...fadd, ...set(s)]),
      ...outAt(i, j), ...get(s), ...f64Store,
      ...outAt(j, i), ...get(s), ...f64Store,
    ]),
  ]));
};

/** The module's bytes (a few hundred: assembled when first used). */
export function gatesWasmBytes(): Uint8Array {
  return wasmModule(
    [funcType([I32, I32, I32, I32, I32, I32, I32, I32, F64, F64, I32, I32]), funcType([I32, I32, I32, I32, I32])],
    [
      { name: 'rows', type: 0, locals: [[8, I32], [4, F64]], code: rowsCode() },
      { name: 'grams', type: 1, locals: [[6, I32], [1, F64]], code: gramsCode() },
    ],
    1,
  );
}

interface Kernels {
  memory: WasmMemory;
  rows: (...a: number[]) => void;
  grams: (...a: number[]) => void;
}
let kernels: Kernels | null | undefined;
let enabled = true;

/** Turns the WebAssembly loops off or on (tests hold them to the JavaScript). */
export function useGatesWasm(on: boolean): void {
  enabled = on;
}

function kernelsOf(): Kernels | null {
  if (!enabled) return null;
  if (kernels !== undefined) return kernels;
  try {
    const wa = wasmApi();
    const memory = new wa.Memory({ initial: 1 });
    const ex = new wa.Instance(new wa.Module(gatesWasmBytes()), { env: { memory } }).exports as Record<string, (...a: number[]) => void>;
    kernels = { memory, rows: ex.rows!, grams: ex.grams! };
  } catch {
    kernels = null; // no WebAssembly: the JavaScript loops
  }
  return kernels;
}

/** The kernels' memory holding at least `bytes` (grown by whole pages; null when it cannot grow). */
function memoryOf(k: Kernels, bytes: number): ArrayBuffer | null {
  const have = k.memory.buffer.byteLength;
  if (bytes > have) {
    try {
      k.memory.grow(Math.ceil((bytes - have) / 65536));
    } catch {
      return null;
    }
  }
  return k.memory.buffer;
}

/** What hiddenRows gives, through WebAssembly; false where that is unavailable (the caller runs the JavaScript). */
export function hiddenRowsWasm(
  pos: Float32Array[][], neg: Float32Array[][], padStates: Float32Array[] | null, padCounts: number[], tPos: number, tNeg: number,
  hidden: number, layers: number, data: Float32Array, first: number, stride: number,
): boolean {
  const k = kernelsOf();
  if (!k) return false;
  const prompts = [...pos, ...neg];
  const inBytes = prompts.length * layers * hidden * 4, padBytes = padStates ? layers * hidden * 4 : 0;
  const inP = 0, padP = inP + inBytes, pcP = (padP + padBytes + 7) & ~7, accP = pcP + prompts.length * 8, outP = accP + 2 * hidden * 8;
  const mem = memoryOf(k, outP + layers * hidden * 4);
  if (!mem) return false;
  const f32 = new Float32Array(mem);
  for (const [p, rows] of prompts.entries()) for (let l = 0; l < layers; l++) f32.set(rows[l]!, (inP + ((p * layers + l) * hidden) * 4) / 4);
  if (padStates) for (let l = 0; l < layers; l++) f32.set(padStates[l]!, (padP + l * hidden * 4) / 4);
  new Float64Array(mem, pcP, prompts.length).set(padCounts);
  k.rows(pos.length, neg.length, hidden, layers, padStates ? 1 : 0, inP, padP, pcP, tPos, tNeg, accP, outP);
  const out = new Float32Array(mem, outP, layers * hidden);
  for (let l = 0; l < layers; l++) data.set(out.subarray(l * hidden, (l + 1) * hidden), first + l * stride);
  return true;
}

/**
 * The Gram matrix of each layer's rows of a [layers, rows, hidden] float32 tensor, as linalg's gramOf gives it (the
 * same sums in the same order), through WebAssembly; null where that is unavailable.
 */
export function layerGramsWasm(data: Float32Array, layers: number, rows: number, hidden: number): number[][][] | null {
  const k = kernelsOf();
  if (!k) return null;
  const dataP = 0, outP = (layers * rows * hidden * 4 + 7) & ~7;
  const mem = memoryOf(k, outP + layers * rows * rows * 8);
  if (!mem) return null;
  new Float32Array(mem, dataP, layers * rows * hidden).set(data.subarray(0, layers * rows * hidden));
  k.grams(rows, hidden, layers, dataP, outP);
  const out = new Float64Array(mem, outP, layers * rows * rows);
  return Array.from({ length: layers }, (_, l) => Array.from({ length: rows }, (_, i) => Array.from(out.subarray((l * rows + i) * rows, (l * rows + i + 1) * rows))));
}
