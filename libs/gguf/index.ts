export type { GgufScalarType, GgufScalar, GgufValue, GgufKv } from './types';
export { readGguf, readTensorData, type GgufFile, type GgufTensorInfo } from './reader';
export { writeGguf, encodeGgufHeader, type GgufTensorOut } from './writer';
export { ggufLayout, converterOrder, parseGgufType, ggufFileName, GGUF_TYPES, type GgufOutType, type GgufLayout, type GgufTensorSpec, type Segment } from './architecture';
export { writeModelGguf, shardSource, producerSource, type SegmentSource } from './model';
export { vocabKeys } from './vocab-seam';
export { useQuantWasm } from './quant-wasm';
export * from './architecture';
export { GgufPass, ggufPassKey, reflinkAsCopy } from './pass';
