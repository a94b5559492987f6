import { lstatSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';

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

/** Creates a new folder (it must not exist) holding the marker. */
export async function makeWorkFolder(dir: string): Promise<void> {
  await mkdir(dir);
  await writeFile(join(dir, WORK_MARKER), markerText(basename(dir)));
}

/** `mkdtemp` with the marker: `prefix` ends the name before mkdtemp's six random characters. */
export async function makeTempWorkFolder(prefix: string): Promise<string> {
  const dir = await mkdtemp(prefix);
  await writeFile(join(dir, WORK_MARKER), markerText(basename(dir)));
  return dir;
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
