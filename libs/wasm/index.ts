// The WebAssembly assembler the SIMD kernels are built from (assembler.ts), and the float-bit conversions
// several of them share (float-bits.ts).
export { uleb, sleb, simd, get, set, i32c, splat, fsplat, V, Scratch, loop, I32, F32, F64, V128, funcType, memoryImport, wasmModule, wasmApi, type Code, type WasmFunction, type WasmMemory, type WasmApi } from './assembler';
export { loadBits, f16ToF32, f32ToBf16, f32ToF16, type FloatBitsDtype } from './float-bits';
