import { lstatSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, join } from 'node:path';
import { removeOnExit } from './cleanup';

/**
 * Proof that a temporary folder is ours. A start-up cleanup removes a leftover folder only when it holds this
 * marker naming that very folder and the process that made it: a name that merely looks like ours (a user's
 * folder, a link) is never removed.
 */
export const WORK_MARKER = '.moe-forge-work';

interface Marker {
  tool: 'moe-forge';
  /** The folder's own name, so a marker copied along with a folder proves nothing about the copy. */
  name: string;
  pid: number;
}

const markerText = (name: string) => JSON.stringify({ tool: 'moe-forge', name, pid: process.pid } satisfies Marker);

/** Writes the marker into `dir` for the folder name it will have (`name`: after a rename, for the `.old-` folder). */
export function markWorkFolder(dir: string, name = basename(dir)): void {
  writeFileSync(join(dir, WORK_MARKER), markerText(name));
}

/**
 * Creates a new folder (it must not exist) holding the marker, removed when the process ends (a signal included)
 * unless the returned function is called. It is registered before it exists: a signal between the two would leave it.
 */
export async function makeWorkFolder(dir: string): Promise<() => void> {
  const forget = removeOnExit(dir);
  try {
    await mkdir(dir);
    await writeFile(join(dir, WORK_MARKER), markerText(basename(dir)));
  } catch (e) {
    forget();
    throw e;
  }
  return forget;
}

/**
 * A new folder named `prefix` and six random letters or digits (as mkdtemp names them), made as makeWorkFolder
 * makes one. The name is chosen here, not by mkdtemp, so that it is registered for removal before it exists: a
 * signal handled before mkdtemp's result reached us would leave the folder behind.
 */
export async function makeTempWorkFolder(prefix: string): Promise<{ dir: string; forget: () => void }> {
  const letters = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  for (;;) {
    const dir = prefix + Array.from(randomBytes(6), (b) => letters[b % letters.length]).join('');
    try {
      return { dir, forget: await makeWorkFolder(dir) };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
}

/**
 * Whether `path` is a work folder that process `pid` made: a real folder (not a link to one) holding a regular
 * marker file that names this folder and that pid. Anything else is not ours to remove.
 */
export function isOurWorkFolder(path: string, pid: number): boolean {
  try {
    if (!lstatSync(path).isDirectory()) return false;
    const file = join(path, WORK_MARKER);
    const st = lstatSync(file);
    if (!st.isFile() || st.size > 4096) return false;
    const m = JSON.parse(readFileSync(file, 'utf8')) as Partial<Marker>;
    return m?.tool === 'moe-forge' && m.name === basename(path) && m.pid === pid;
  } catch {
    return false;
  }
}
