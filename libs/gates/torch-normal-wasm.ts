import { FLOAT_END, SHARED_PAGES, sharedMemory } from '../safetensors';
import { F32, funcType, I32, simd, sleb, uleb, V128, wasmApi, wasmModule, type Code } from '../wasm';

/**
 * The AVX2 Box-Muller kernel of torch-rng.ts as a WebAssembly SIMD function, four pairs per vector, built
 * here from a small instruction list and libs/wasm's assembler (no toolchain, no binary in the repository). float32 operations map
 * one to one; each fused multiply-add is computed in float64 (the product is exact) and rounded to float32,
 * and a lane whose float64 sum lands exactly halfway between two floats (the one case where that can round
 * differently from a true fused multiply-add) flags its block for the exact JavaScript path.
 */

// Instructions (WebAssembly core + fixed-width SIMD).
const I = {
  localGet: (i: number): Code => [0x20, ...uleb(i)],
  localSet: (i: number): Code => [0x21, ...uleb(i)],
  i32Const: (v: number): Code => [0x41, ...sleb(v | 0)],
  i32Add: [0x6a],
  i32Shl: [0x74],
  i32LtU: [0x49],
  i32Store: (offset: number): Code => [0x36, 2, ...uleb(offset)],
  v128Load: (offset: number): Code => [...simd(0x00), 4, ...uleb(offset)],
  v128Store: (offset: number): Code => [...simd(0x0b), 4, ...uleb(offset)],
  v128Const: (bytes: Uint8Array): Code => [...simd(0x0c), ...bytes],
  shuffle: (lanes: number[]): Code => [...simd(0x0d), ...lanes],
  f32x4Lt: simd(0x43),
  and: simd(0x4e),
  andnot: simd(0x4f),
  or: simd(0x50),
  xor: simd(0x51),
  anyTrue: simd(0x53),
  demote: simd(0x5e),
  promote: simd(0x5f),
  i32x4Eq: simd(0x37),
  i32x4Shl: simd(0xab),
  i32x4ShrU: simd(0xad),
  i32x4Add: simd(0xae),
  i32x4Sub: simd(0xb1),
  i64x2Eq: simd(0xd6),
  f32x4Neg: simd(0xe1),
  f32x4Sqrt: simd(0xe3),
  f32x4Add: simd(0xe4),
  f32x4Sub: simd(0xe5),
  f32x4Mul: simd(0xe6),
  f64x2Add: simd(0xf0),
  f64x2Mul: simd(0xf2),
  truncSat: simd(0xf8),
  convert: simd(0xfa),
  /** Relaxed SIMD's f32x4 multiply-add: a true fused multiply-add where the engine has one (checked: fusedMaddWorks). */
  madd: simd(0x105),
};

function splatF32(x: number): Code {
  return I.v128Const(new Uint8Array(new Float32Array([x, x, x, x]).buffer));
}
function splatI32(x: number): Code {
  return I.v128Const(new Uint8Array(new Int32Array([x, x, x, x]).buffer));
}
function splatI64(lo: number, hi: number): Code {
  return I.v128Const(new Uint8Array(new Int32Array([lo, hi, lo, hi]).buffer));
}

const LOW_TO_LOW = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23];
const HIGH_TO_LOW = [8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15];

const f = Math.fround;
const C = {
  logP: [7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1].map(f),
  q1: f(-2.1219444e-4),
  q2: f(0.693359375),
  sqrthf: f(0.707106781186547524),
  dp1: f(-0.78515625),
  dp2: f(-2.4187564849853515625e-4),
  dp3: f(-3.77489497744594108e-8),
  sinP: [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f),
  cosP: [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f),
  fopi: f(1.27323954473516),
  twoPi: f(2 * Math.PI),
};

/**
 * How the kernel's multiply-add chains are computed. `emulated`: values held as two float64x2 halves of float32
 * values (a product of two floats is exact in float64, and demote + promote rounds a lane to float32), a float64 sum
 * that lands halfway between two floats flagging its block for the exact JavaScript path. `fused`: float32 lanes,
 * each fused multiply-add the engine's relaxed one, a true fused multiply-add where fusedMaddWorks says so (no flags).
 */
type Chains = 'emulated' | 'fused';

/**
 * Function body: (param nBlocks i32); words at WORDS, normals at OUT, per-block flags at FLAGS (non-zero: redo the
 * block exactly; the fused chains write 0).
 */
function kernelBody(WORDS: number, OUT: number, FLAGS: number, chains: Chains): { locals: number; code: Code } {
  // Locals: 0 = nBlocks (param), 1 = block index b, 2 = byte offset p, then v128 scratch.
  let next = 3;
  const v = () => next++;
  const code: Code = [];
  // Statements of one group go to its own list; the groups' lists are interleaved statement by statement
  // (independent dependency chains side by side keep the CPU's pipelines full).
  let stmts: Code[] | null = null;
  const emit = (...parts: Code[]) => {
    const c = parts.flat();
    if (stmts) stmts.push(c);
    else code.push(...c);
  };
  const set = (dst: number, ...expr: Code[]) => emit(...expr, I.localSet(dst));
  const get = I.localGet;
  const fused = chains === 'fused';
  const flag = v();
  let sL = v();
  let tmp = v();
  const MASK29 = splatI64(0x1fffffff, 0);
  const HALF29 = splatI64(0x10000000, 0);

  // A chain value: two float64x2 locals (emulated) or one float32x4 local (fused).
  type Val = readonly number[];
  type Operand = Val | number;
  const val = (): Val => (fused ? [v()] : [v(), v()]);
  const half = (o: Operand, h: number): Code => (typeof o === 'number' ? I.v128Const(new Uint8Array(new Float64Array([o, o]).buffer)) : get(o[h]!));
  const lanes = (o: Operand): Code => (typeof o === 'number' ? splatF32(o) : get(o[0]!));
  const ROUND = [...I.demote, ...I.promote];
  /** dst = the float32 values `f32` computes. */
  const from = (dst: Val, f32: Code) => {
    if (fused) return set(dst[0]!, f32);
    set(tmp, f32);
    set(dst[0]!, get(tmp), I.promote);
    set(dst[1]!, get(tmp), get(tmp), I.shuffle(HIGH_TO_LOW), I.promote);
  };
  /** The float32 values of a chain value. */
  const f32 = (d: Val): Code => (fused ? get(d[0]!) : [...get(d[0]!), ...I.demote, ...get(d[1]!), ...I.demote, ...I.shuffle(LOW_TO_LOW)]);
  /** dst = a·b rounded to float32. */
  const mul = (dst: Val, a: Operand, b: Operand) => {
    if (fused) return set(dst[0]!, lanes(a), lanes(b), I.f32x4Mul);
    for (const h of [0, 1]) set(dst[h]!, half(a, h), half(b, h), I.f64x2Mul, ROUND);
  };
  /** dst = a·k where the product is exact in float32 (k a power of two). */
  const scaled = (dst: Val, a: Val, k: number) => {
    if (fused) return set(dst[0]!, get(a[0]!), splatF32(k), I.f32x4Mul);
    for (const h of [0, 1]) set(dst[h]!, get(a[h]!), I.v128Const(new Uint8Array(new Float64Array([k, k]).buffer)), I.f64x2Mul);
  };
  /**
   * dst = fma(a, b, c) rounded once to float32. Emulated, a float64 sum halfway between two floats flags the block;
   * `exact`: the float64 sum is exact for every input (checked over all 2^24 inputs of the chain, see
   * test/unit/torch-rng.test.ts), so it needs no flag.
   */
  const fma = (dst: Val, a: Operand, b: Operand, c: Operand, exact = false) => {
    if (fused) return set(dst[0]!, lanes(a), lanes(b), lanes(c), I.madd);
    for (const h of [0, 1]) {
      set(sL, half(a, h), half(b, h), I.f64x2Mul, half(c, h), I.f64x2Add);
      if (!exact) set(flag, get(flag), get(sL), MASK29, I.and, HALF29, I.i64x2Eq, I.or);
      set(dst[h]!, get(sL), ROUND);
    }
  };

  const one = splatF32(1);
  const groups: Code[][] = [];

  // loop over blocks: p = b * 64
  emit([0x02, 0x40], [0x03, 0x40]); // block, loop
  emit(get(1), get(0), I.i32LtU, [0x45], [0x0d, 1]); // if !(b < n) break
  emit(get(1), I.i32Const(6), I.i32Shl, I.localSet(2));
  if (!fused) set(flag, splatI32(0));
  for (const g of [0, 16]) {
    stmts = [];
    groups.push(stmts);
    // Fresh locals per group.
    [sL, tmp] = [v(), v()];
    const [k1, k2, x, e, m, y, radius, th, j, jf, r, c, s, ps, pc, n1, n2] = Array.from({ length: 17 }, v);
    const [xD, zD, yD, tD, rD, zzD, cD, sD] = Array.from({ length: 8 }, val);
    // k1 = words[j], k2 = words[j + 8] for the four pairs j = g/4 .. g/4 + 3
    set(k1, get(2), I.v128Load(WORDS + g), splatI32(0xffffff), I.and);
    set(k2, get(2), I.v128Load(WORDS + g + 32), splatI32(0xffffff), I.and);
    // log(1 - u1), the kernel's log256_ps
    set(x, one, get(k1), I.convert, splatF32(2 ** -24), I.f32x4Mul, I.f32x4Sub);
    set(e, get(x), I.i32Const(23), I.i32x4ShrU, splatI32(127), I.i32x4Sub, I.convert, one, I.f32x4Add);
    set(x, get(x), splatI32(~0x7f800000), I.and, splatF32(0.5), I.or);
    set(m, get(x), splatF32(C.sqrthf), I.f32x4Lt);
    set(e, get(e), one, get(m), I.and, I.f32x4Sub);
    set(x, get(x), one, I.f32x4Sub, get(x), get(m), I.and, I.f32x4Add);
    from(xD, get(x));
    mul(zD, xD, xD);
    fma(yD, C.logP[0]!, xD, C.logP[1]!, true);
    for (let k = 2; k < 9; k++) fma(yD, yD, xD, C.logP[k]!, true);
    mul(yD, yD, xD);
    from(tD, [...get(e), ...splatF32(C.q1), ...I.f32x4Mul]);
    fma(yD, yD, zD, tD);
    set(y, f32(yD));
    // y - z·0.5 (exact product, one rounding)
    set(y, get(y), f32(zD), splatF32(0.5), I.f32x4Mul, I.f32x4Sub);
    // e·Q2 is exact, so the kernel's fused add rounds once.
    set(radius, get(x), get(y), I.f32x4Add, get(e), splatF32(C.q2), I.f32x4Mul, I.f32x4Add, splatF32(-2), I.f32x4Mul, I.f32x4Sqrt);
    // sincos256_ps of theta = 2π·u2 (theta >= 0)
    set(th, splatF32(C.twoPi), get(k2), I.convert, splatF32(2 ** -24), I.f32x4Mul, I.f32x4Mul);
    set(j, get(th), splatF32(C.fopi), I.f32x4Mul, I.truncSat, splatI32(1), I.i32x4Add, splatI32(~1), I.and);
    set(jf, get(j), I.convert);
    set(r, get(th), get(jf), splatF32(C.dp1), I.f32x4Mul, I.f32x4Add);
    set(r, get(r), get(jf), splatF32(C.dp2), I.f32x4Mul, I.f32x4Add);
    from(rD, get(r));
    from(tD, get(jf));
    fma(rD, tD, C.dp3, rD, true);
    mul(zzD, rD, rD);
    fma(cD, C.cosP[0]!, zzD, C.cosP[1]!);
    fma(cD, cD, zzD, C.cosP[2]!);
    mul(cD, cD, zzD);
    scaled(tD, zzD, -0.5);
    fma(cD, cD, zzD, tD);
    set(c, f32(cD), one, I.f32x4Add);
    fma(sD, C.sinP[0]!, zzD, C.sinP[1]!);
    fma(sD, sD, zzD, C.sinP[2]!);
    mul(sD, sD, zzD);
    fma(sD, sD, rD, rD);
    set(s, f32(sD));
    // polynomial choice: m = (j & 2) == 0 selects the sine polynomial for the sine
    set(m, get(j), splatI32(2), I.and, splatI32(0), I.i32x4Eq);
    set(ps, get(m), get(s), I.and); // ysin2
    set(pc, get(c), get(m), I.andnot); // ysin1
    // sine: (ysin1 + ysin2) ^ sign, sign = (j & 4) << 29
    set(n2, get(pc), get(ps), I.f32x4Add, get(j), splatI32(4), I.and, I.i32Const(29), I.i32x4Shl, I.xor);
    // cosine: ((c - ysin1) + (s - ysin2)) ^ sign, sign = (~(j - 2) & 4) << 29
    set(n1, get(c), get(pc), I.f32x4Sub, get(s), get(ps), I.f32x4Sub, I.f32x4Add, splatI32(4), get(j), splatI32(2), I.i32x4Sub, I.andnot, I.i32Const(29), I.i32x4Shl, I.xor);
    // n·std + mean with std 1, mean 0 (fmadd turns -0 into +0)
    emit(get(2), get(radius), get(n1), I.f32x4Mul, splatF32(0), I.f32x4Add, I.v128Store(OUT + g));
    emit(get(2), get(radius), get(n2), I.f32x4Mul, splatF32(0), I.f32x4Add, I.v128Store(OUT + g + 32));
  }
  stmts = null;
  const longest = Math.max(...groups.map((l) => l.length));
  for (let i = 0; i < longest; i++) for (const l of groups) if (l[i]) code.push(...l[i]!);
  emit(get(1), I.i32Const(2), I.i32Shl, fused ? I.i32Const(0) : [...get(flag), ...I.anyTrue], I.i32Store(FLAGS));
  emit(get(1), I.i32Const(1), I.i32Add, I.localSet(1), [0x0c, 0]); // b++, continue
  emit([0x0b, 0x0b]); // end loop, end block
  return { locals: next - 3, code };
}

/**
 * Function body: (param n i32): the next n tempered mt19937 words into the words area, from the state
 * (624 words, then the next index) at STATE. The engine's twist and tempering run four words at a time; the
 * tempered block at TEMPERED is recomputed on entry, so the caller may move the state between calls.
 */
function mtFillBody(WORDS: number, STATE: number, twistOnly = false): Code {
  const TEMPERED = STATE + 625 * 4;
  const POS = STATE + 624 * 4;
  const [n, i, pos, y, k] = [0, 1, 2, 3, 4];
  const vy = 5;
  const ld = (off: number): Code => [0x28, 2, ...uleb(off)];
  const st = (off: number): Code => [0x36, 2, ...uleb(off)];
  const vld = (off: number): Code => [...simd(0x00), 0, ...uleb(off)];
  const vst = (off: number): Code => [...simd(0x0b), 0, ...uleb(off)];
  const get = I.localGet;
  const set = I.localSet;
  const c = I.i32Const;
  const [AND, OR, XOR, SHL, SHRU, SUB, ADD, GEU, EQ, LTU] = [[0x71], [0x72], [0x73], [0x74], [0x76], [0x6b], [0x6a], [0x4f], [0x46], [0x49]];
  // mt[a] = mt[src] ^ (y >>> 1) ^ (-(y & 1) & MATRIX_A), y from mt[a] and mt[next] (byte addresses on the stack)
  const twistStep = (addr: Code, src: Code, nextAddr: Code): Code => [
    ...addr, ...ld(0), ...c(0x80000000), ...AND, ...nextAddr, ...ld(0), ...c(0x7fffffff), ...AND, ...OR, ...set(y),
    ...addr,
    ...src, ...ld(0), ...get(y), ...c(1), ...SHRU, ...XOR, ...c(0), ...get(y), ...c(1), ...AND, ...SUB, ...c(0x9908b0df), ...AND, ...XOR,
    ...st(0),
  ];
  // The same on four words: k is the byte offset of the first, src the byte distance of mt[src] from mt[a].
  const twist4 = (srcDelta: number): Code => [
    ...get(k), ...vld(STATE), ...splatI32(0x80000000), ...I.and, ...get(k), ...vld(STATE + 4), ...splatI32(0x7fffffff), ...I.and, ...I.or, ...set(vy),
    ...get(k),
    ...(srcDelta >= 0 ? [...get(k), ...vld(STATE + srcDelta)] : [...get(k), ...c(-srcDelta), ...SUB, ...vld(STATE)]),
    ...get(vy), ...c(1), ...I.i32x4ShrU, ...I.xor,
    ...splatI32(0), ...get(vy), ...splatI32(1), ...I.and, ...I.i32x4Sub, ...splatI32(0x9908b0df), ...I.and, ...I.xor,
    ...vst(STATE),
  ];
  const loop = (cond: Code, body: Code): Code => [0x02, 0x40, 0x03, 0x40, ...cond, 0x0d, 1, ...body, 0x0c, 0, 0x0b, 0x0b];
  const step = (d: number): Code => [...get(k), ...c(d), ...ADD, ...set(k)];
  const a = [...c(STATE), ...get(k), ...ADD];
  const twist: Code = [
    ...c(0), ...set(k),
    ...loop([...get(k), ...c(224 * 4), ...GEU], [...twist4(397 * 4), ...step(16)]),
    ...loop([...get(k), ...c(227 * 4), ...GEU], [...twistStep(a, [...a, ...c(397 * 4), ...ADD], [...a, ...c(4), ...ADD]), ...step(4)]),
    ...loop([...get(k), ...c(623 * 4), ...GEU], [...twist4(-227 * 4), ...step(16)]),
    ...twistStep(c(STATE + 623 * 4), c(STATE + 396 * 4), c(STATE)),
  ];
  const temper: Code = [
    ...c(0), ...set(k),
    ...loop([...get(k), ...c(624 * 4), ...GEU], [
      ...get(k), ...vld(STATE), ...set(vy),
      ...get(vy), ...get(vy), ...c(11), ...I.i32x4ShrU, ...I.xor, ...set(vy),
      ...get(vy), ...get(vy), ...c(7), ...I.i32x4Shl, ...splatI32(0x9d2c5680), ...I.and, ...I.xor, ...set(vy),
      ...get(vy), ...get(vy), ...c(15), ...I.i32x4Shl, ...splatI32(0xefc60000 | 0), ...I.and, ...I.xor, ...set(vy),
      ...get(k), ...get(vy), ...get(vy), ...c(18), ...I.i32x4ShrU, ...I.xor, ...vst(TEMPERED),
      ...step(16),
    ]),
  ];
  // mtTwist: the twist alone, n times (a skip of whole blocks: the words are never tempered).
  if (twistOnly) return loop([...get(n), ...c(0), ...EQ], [...twist, ...get(n), ...c(1), ...SUB, ...set(n)]);
  // words to copy now: min(624 - pos, n - i)
  const take: Code = [...c(624), ...get(pos), ...SUB, ...get(n), ...get(i), ...SUB, ...c(624), ...get(pos), ...SUB, ...get(n), ...get(i), ...SUB, ...LTU, 0x1b];
  return [
    ...c(0), ...ld(POS), ...set(pos),
    ...get(pos), ...c(624), ...LTU, 0x04, 0x40, ...temper, 0x0b,
    ...loop([...get(i), ...get(n), ...GEU], [
      ...get(pos), ...c(624), ...EQ, 0x04, 0x40, ...twist, ...temper, ...c(0), ...set(pos), 0x0b,
      ...take, ...set(y),
      // memory.copy(words + 4i, TEMPERED + 4pos, 4y)
      ...get(i), ...c(2), ...SHL, ...c(WORDS), ...ADD, ...c(TEMPERED), ...get(pos), ...c(2), ...SHL, ...ADD, ...get(y), ...c(2), ...SHL, 0xfc, 0x0a, 0, 0,
      ...get(pos), ...get(y), ...ADD, ...set(pos),
      ...get(i), ...get(y), ...ADD, ...set(i),
    ]),
    ...c(0), ...get(pos), ...st(POS),
  ];
}

/** Blocks per call: words and normals take 64 bytes a block each. */
export const WASM_BLOCKS = 2048;

/** Byte addresses in the memory shared with float-wasm.ts: words, normals, flags, mt19937 state (+ its tempered block). */
export function layout() {
  const WORDS = FLOAT_END;
  const OUT = WORDS + WASM_BLOCKS * 64;
  const FLAGS = OUT + WASM_BLOCKS * 64;
  const STATE = FLAGS + WASM_BLOCKS * 4;
  const END = STATE + (625 + 624) * 4;
  return { WORDS, OUT, FLAGS, STATE, END };
}

function moduleBytes(fused: boolean): Uint8Array {
  const { WORDS, OUT, FLAGS, STATE } = layout();
  const { locals, code } = kernelBody(WORDS, OUT, FLAGS, fused ? 'fused' : 'emulated');
  // type 0: (i32) -> (); the memory shared with float-wasm.ts
  return wasmModule(
    [funcType([I32])],
    [
      { name: 'normals', type: 0, locals: [[2, I32], [locals, V128]], code },
      { name: 'mtFill', type: 0, locals: [[4, I32], [1, V128]], code: mtFillBody(WORDS, STATE) },
      { name: 'mtTwist', type: 0, locals: [[4, I32], [1, V128]], code: mtFillBody(WORDS, STATE, true) },
    ],
    SHARED_PAGES,
  );
}

export interface WasmNormals {
  /** 16 words per block, written by the caller. */
  words: Int32Array;
  /** 16 normals per block. */
  out: Float32Array;
  /** Byte address of `out` in the shared memory. */
  outAddress: number;
  /** The stream whose values `out` holds now; it saves what it still needs before another one refills `out`. */
  owner: { evict(): void } | null;
  /** Non-zero where a block must be recomputed exactly. */
  flags: Int32Array;
  run(blocks: number): void;
  /** mt19937 state (624 words, then the next index) for `mtFill`. */
  mtState: Int32Array;
  /** Writes the next n words of the engine in `mtState` to `words`. */
  mtFill(n: number): void;
  /** Twists the state in `mtState` n times (its index is left alone). */
  mtTwist(n: number): void;
  /** Whether the kernel multiplies and adds with the engine's fused multiply-add (no block is flagged). */
  fused: boolean;
}


let instance: WasmNormals | null | undefined;
let enabled = true;
let fusedWanted = true;

/** Turns the WebAssembly kernel off or on (tests and the benchmark compare it with the JavaScript path). */
export function useWasmNormals(on: boolean): void {
  enabled = on;
}

/** Lets the kernel use the engine's fused multiply-add where it has one (true), or never (tests and the benchmark). */
export function useFusedNormals(on: boolean): void {
  if (on !== fusedWanted) instance = undefined;
  fusedWanted = on;
}

let fusedMadd: boolean | undefined;

/**
 * Whether this engine's f32x4.relaxed_madd is a true fused multiply-add, on cases where one rounding and two give
 * different floats. Relaxed SIMD lets an engine do either; V8 fuses on x86 CPUs with FMA. Node 20's V8 compiles it
 * only behind a flag, which is set here, before the first module that uses it (Node 22's has it by default).
 */
export function fusedMaddWorks(): boolean {
  if (fusedMadd !== undefined) return fusedMadd;
  fusedMadd = false;
  // madd(a, b, c): lane 0 of relaxed_madd(splat a, splat b, splat c), stored at address 0 of its own memory.
  const code = [...I.i32Const(0), ...I.localGet(0), ...simd(0x13), ...I.localGet(1), ...simd(0x13), ...I.localGet(2), ...simd(0x13), ...I.madd, ...simd(0x1f), 0, 0x38, 2, 0];
  const bytes = wasmModule([funcType([F32, F32, F32])], [{ name: 'madd', type: 0, locals: [], code }], 1);
  const wa = wasmApi();
  let module: object;
  try {
    module = new wa.Module(bytes);
  } catch {
    try {
      (require('node:v8') as typeof import('node:v8')).setFlagsFromString('--experimental-wasm-relaxed-simd');
      module = new wa.Module(bytes);
    } catch {
      return false;
    }
  }
  const memory = new wa.Memory({ initial: 1 });
  const run = new wa.Instance(module, { env: { memory } }).exports.madd as (a: number, b: number, c: number) => void;
  const madd = (a: number, b: number, c: number) => {
    run(a, b, c);
    return new Float32Array(memory.buffer, 0, 1)[0]!;
  };
  const f = Math.fround;
  // (1 + 2^-23)(1 - 2^-23) = 1 - 2^-46: fused, minus one leaves -2^-46; rounded first, 0. And a sum whose
  // product's low bits decide the rounding: fused gives the exactly rounded float.
  fusedMadd = madd(f(1 + 2 ** -23), f(1 - 2 ** -23), -1) === -(2 ** -46) && madd(f(1 + 2 ** -12), f(1 + 2 ** -12), f(-1 - 2 ** -11)) === 2 ** -24 && madd(3, 5, 7) === 22;
  return fusedMadd;
}

/** Blocks redone on the exact JavaScript path since the start (the kernel's halfway float64 sums). */
export const wasmStats = { blocks: 0, redone: 0 };

/** The kernel, or null where WebAssembly SIMD is unavailable or turned off (the JavaScript path is used). */
export function wasmNormals(): WasmNormals | null {
  if (!enabled) return null;
  if (instance !== undefined) return instance;
  try {
    const wa = wasmApi();
    const mem = sharedMemory();
    const { WORDS, OUT, FLAGS, STATE, END } = layout();
    if (END > mem.buffer.byteLength) throw new Error('internal: shared WebAssembly memory too small');
    const fused = fusedWanted && fusedMaddWorks();
    const inst = new wa.Instance(new wa.Module(moduleBytes(fused)), { env: { memory: mem } });
    const fn = inst.exports.normals as (n: number) => void;
    instance = {
      words: new Int32Array(mem.buffer, WORDS, WASM_BLOCKS * 16),
      out: new Float32Array(mem.buffer, OUT, WASM_BLOCKS * 16),
      outAddress: OUT,
      owner: null,
      flags: new Int32Array(mem.buffer, FLAGS, WASM_BLOCKS),
      run: fn,
      mtState: new Int32Array(mem.buffer, STATE, 625),
      mtFill: inst.exports.mtFill as (n: number) => void,
      mtTwist: inst.exports.mtTwist as (n: number) => void,
      fused,
    };
  } catch {
    instance = null;
  }
  return instance;
}
