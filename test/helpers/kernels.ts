import { usePortableBf16 } from '../../libs/forward';

/** Runs `f` with the native kernels' portable twins (true) or the CPU's own (false), the CPU's own again after. */
export async function withKernel<T>(portable: boolean, f: () => Promise<T>): Promise<T> {
  usePortableBf16(portable);
  try {
    return await f();
  } finally {
    usePortableBf16(false);
  }
}
