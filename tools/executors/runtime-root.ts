import { join, resolve } from 'node:path';

/**
 * The checkout (or installed package) the running code comes from. The same from the sources (tools/executors/,
 * run through tsx) and from the runtime inputs' bundles (build/runtime/): two folders down either way. Node
 * resolves links for the main module, so a workspace whose build/ links to a checkout finds that checkout.
 */
export const RUNTIME_ROOT = resolve(__dirname, '..', '..');

/**
 * A module of build/ through the one loader, bin/built.js (it refuses a build the sources moved on from). Named
 * by a computed path so that esbuild leaves it out of the bundle: bin/built.js finds build/ beside itself.
 */
export function builtModule<T>(rel: string): T {
  const loader = join(RUNTIME_ROOT, 'bin', 'built.js');
  return (require(loader) as { built(rel: string): T }).built(rel);
}
