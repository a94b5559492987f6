import { readFileSync } from 'node:fs';

let hugeMalloc: boolean | undefined;

/** Tests: the weight buffers' memory as if malloc did (true) or did not (false) give huge pages; undefined: as it does. */
export function assumeHugeMalloc(on: boolean | undefined): void {
  hugeMalloc = on;
}

/**
 * Whether this process's malloc maps its large blocks with transparent huge pages: Linux with them not off,
 * glibc 2.35 or later, started with `glibc.malloc.hugetlb=1` (the forward worker is, `withHugeMalloc`). Then
 * plain weight buffers cost one page fault per 2 MiB instead of per 4 KiB: a WebAssembly memory (V8 maps it
 * itself, no huge pages) faulted in ~110k pages for TinyLlama's two layers of float32 weights; with huge pages
 * ~22k in all, and a 69-token pass took ~17% less CPU, the kernels' copy in and out of their own memory included.
 */
export function mallocHugePages(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env === process.env && hugeMalloc !== undefined) return hugeMalloc;
  let on = false;
  if (process.platform === 'linux' && /(^|:)glibc\.malloc\.hugetlb=[12]($|:)/.test(env.GLIBC_TUNABLES ?? '')) {
    const glibc = String((process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header?.glibcVersionRuntime ?? '');
    const [major = 0, minor = 0] = glibc.split('.').map(Number);
    let thp = '';
    try {
      thp = readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    } catch {
      // no transparent huge pages in this kernel
    }
    on = (major > 2 || (major === 2 && minor >= 35)) && /\[(always|madvise)\]/.test(thp);
  }
  if (env === process.env) hugeMalloc = on;
  return on;
}
