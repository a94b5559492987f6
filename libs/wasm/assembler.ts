/**
 * A small WebAssembly assembler: the encodings (LEB128), the core and SIMD instructions the kernels use, scratch
 * locals, a counted loop and the module's sections. The kernels (libs/safetensors/float-wasm.ts,
 * libs/gguf/quant-wasm.ts, libs/gates/torch-normal-wasm.ts) are built from it at run time: no toolchain, no
 * binary in the repository.
 */

/** Instruction bytes. */
export type Code = number[];

export const uleb = (n: number): number[] => {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
};
export const sleb = (n: number): number[] => {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(b & 0x40)) || (n === -1 && b & 0x40)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
};
/** A fixed-width SIMD instruction (prefix 0xfd). */
export const simd = (op: number): Code => [0xfd, ...uleb(op)];

export const get = (i: number): Code => [0x20, ...uleb(i)];
export const set = (i: number): Code => [0x21, ...uleb(i)];
export const i32c = (v: number): Code => [0x41, ...sleb(v | 0)];
/** v128.const of four equal i32 lanes. */
export const splat = (v: number): Code => [...simd(0x0c), ...new Uint8Array(new Int32Array([v, v, v, v]).buffer)];
/** v128.const of four equal f32 lanes. */
export const fsplat = (v: number): Code => [...simd(0x0c), ...new Uint8Array(new Float32Array([v, v, v, v]).buffer)];

/** SIMD instructions; memory accesses with alignment hint 0 (byte: the kernels' data sits at any address). */
export const V = {
  load: [...simd(0x00), 0, 0],
  loadAt: (off: number): Code => [...simd(0x00), 0, ...uleb(off)],
  load16x4u: [...simd(0x04), 0, 0],
  load16x4uAt: (off: number): Code => [...simd(0x04), 0, ...uleb(off)],
  store: [...simd(0x0b), 0, 0],
  storeAt: (off: number): Code => [...simd(0x0b), 0, ...uleb(off)],
  /** The low 64 bits (four 16-bit values after a narrow). */
  store64: [...simd(0x5b), 0, 0, 0],
  store64At: (off: number): Code => [...simd(0x5b), 0, ...uleb(off), 0],
  /** Lane 0's low 16 bits. */
  store16At: (off: number): Code => [...simd(0x59), 0, ...uleb(off), 0],
  shuffle: (lanes: number[]): Code => [...simd(0x0d), ...lanes],
  narrowU16: simd(0x86),
  narrowS16: simd(0x85),
  narrowS8: simd(0x65),
  and: simd(0x4e),
  andnot: simd(0x4f),
  or: simd(0x50),
  xor: simd(0x51),
  bitselect: simd(0x52),
  eq: simd(0x37),
  gtS: simd(0x3b),
  geS: simd(0x3f),
  shl: simd(0xab),
  shrS: simd(0xac),
  shrU: simd(0xad),
  maxS: simd(0xb8),
  add: simd(0xae),
  sub: simd(0xb1),
  feq: simd(0x41),
  fne: simd(0x42),
  flt: simd(0x43),
  fge: simd(0x46),
  fabs: simd(0xe0),
  fadd: simd(0xe4),
  fsub: simd(0xe5),
  fmul: simd(0xe6),
  fdiv: simd(0xe7),
  ffloor: simd(0x68),
  fsplat: simd(0x13),
};

/** Scratch v128 locals of one function body, numbered from `first`. */
export class Scratch {
  next: number;
  constructor(readonly first: number) {
    this.next = first;
  }
  get(): number {
    return this.next++;
  }
  get count(): number {
    return this.next - this.first;
  }
}

/**
 * A loop while the i32 local `n` is above 0, `lanes` values a round: `ptrs` are i32 locals advanced by their
 * bytes per round, then n drops by `lanes`.
 */
export function loop(n: number, ptrs: [number, number][], body: Code, lanes: number): Code {
  const adv = ptrs.flatMap(([p, step]) => [...get(p), ...i32c(step), 0x6a, ...set(p)]);
  return [
    0x02, 0x40, 0x03, 0x40,
    ...get(n), ...i32c(0), 0x4c, 0x0d, 1, // n <= 0: done
    ...body,
    ...adv,
    ...get(n), ...i32c(lanes), 0x6b, ...set(n),
    0x0c, 0, 0x0b, 0x0b,
  ];
}

export const I32 = 0x7f;
export const F32 = 0x7d;
export const F64 = 0x7c;
export const V128 = 0x7b;

/** One exported function: its type's index, its locals as [count, value type] runs, its body. */
export interface WasmFunction {
  name: string;
  type: number;
  locals: [number, number][];
  code: Code;
}

/** A function type of i32/f32 parameters and no result. */
export const funcType = (params: number[]): Code => [0x60, ...uleb(params.length), ...params, 0];

const name = (s: string) => [...uleb(s.length), ...Buffer.from(s)];
const vec = (items: number[][]) => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]) => [id, ...uleb(body.length), ...body];

/** The import section's entry for `env.memory` of at least `pages` pages. */
export function memoryImport(pages: number): number[] {
  return [...name('env'), ...name('memory'), 0x02, 0x00, ...uleb(pages)];
}

/** A module: the types, the memory import, the functions, each exported by its name. */
export function wasmModule(types: Code[], fns: WasmFunction[], pages: number): Uint8Array {
  const bodies = fns.map((f) => {
    const b = [...vec(f.locals.map(([count, type]) => [...uleb(count), type])), ...f.code, 0x0b];
    return [...uleb(b.length), ...b];
  });
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec(types)),
    ...section(2, vec([memoryImport(pages)])),
    ...section(3, vec(fns.map((f) => uleb(f.type)))),
    ...section(7, vec(fns.map((f, i) => [...name(f.name), 0x00, ...uleb(i)]))),
    ...section(10, vec(bodies)),
  ]);
}

export interface WasmMemory {
  buffer: ArrayBuffer;
  grow(pages: number): number;
}
export interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
  Memory: new (desc: { initial: number; maximum?: number }) => WasmMemory;
  compile(bytes: Uint8Array): Promise<object>;
}
/** The runtime's WebAssembly (typed here: the project's lib settings do not declare it). */
export const wasmApi = (): WasmApi => (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
