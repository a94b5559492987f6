export type { GgufScalarType, GgufScalar, GgufValue, GgufKv } from './types';
export { readGguf, readTensorData, type GgufFile, type GgufTensorInfo } from './reader';
