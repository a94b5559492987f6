import { existsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Where a Node addon built by scripts/build.mjs lies (build/NAME): beside the bundles (a bundle's __dirname is
 * build/, or a folder in it) or, run from sources, in build/ above libs/; null where it was not built.
 */
export function builtAddonPath(name: string): string | null {
  return [join(__dirname, name), join(__dirname, '..', name), join(__dirname, '..', '..', 'build', name)].find((p) => existsSync(p)) ?? null;
}
