/** Readers for the reference tensors stored beside the fixtures. */
import { join } from 'node:path';
import { SafetensorsWeights, decodeFloats, readTensorBytes } from '../../libs/safetensors';

export const FIXTURES = join(__dirname, '..', 'fixtures');

export async function openReference(file: string): Promise<{ f32(name: string): Promise<Float32Array>; i64(name: string): Promise<number[]>; shape(name: string): number[] }> {
  const w = await SafetensorsWeights.openFiles(join(file, '..'), [file]);
  return {
    async f32(name) {
      return decodeFloats(await readTensorBytes(w.get(name)), 'F32');
    },
    async i64(name) {
      const b = await readTensorBytes(w.get(name));
      return [...new BigInt64Array(b.buffer, b.byteOffset, b.byteLength / 8)].map(Number);
    },
    shape: (name) => w.get(name).shape,
  };
}
