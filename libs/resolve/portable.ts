import { homedir } from 'node:os';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';

/**
 * Stage outputs are cached by Nx and shared between machines (a remote cache), so the paths they record must
 * not depend on where the checkout, the user's home or the Hugging Face cache lie. A portable path is
 *   `hf-cache:<rel>`  inside the Hugging Face hub cache (HF_HUB_CACHE on the reading machine),
 *   `<rel>`           inside the workspace (relative, POSIX separators),
 *   `~/<rel>`         inside the user's home,
 *   an absolute path  anywhere else (as a recipe that names an absolute path has it).
 */
export interface PathRoots {
  /** The workspace (Nx) or the folder relative model paths resolve against (command line). */
  workspace: string;
  /** The Hugging Face hub cache. */
  hubCache: string;
}

const HF = 'hf-cache:';

function inside(root: string, p: string): string | null {
  const rel = relative(root, p);
  if (rel === '') return '.';
  if (rel.startsWith('..') || isAbsolute(rel)) return null;
  return rel.split(sep).join('/');
}

export function portablePath(abs: string, roots: PathRoots): string {
  const hub = inside(roots.hubCache, abs);
  if (hub !== null) return HF + hub;
  const ws = inside(roots.workspace, abs);
  if (ws !== null) return ws;
  const home = inside(homedir(), abs);
  if (home !== null) return `~/${home}`;
  return abs;
}

export function localPath(p: string, roots: PathRoots): string {
  if (p.startsWith(HF)) return join(roots.hubCache, p.slice(HF.length));
  if (p.startsWith('~/')) return join(homedir(), p.slice(2));
  if (isAbsolute(p)) return p;
  return resolve(roots.workspace, p);
}

/** A file inside a model folder, as a POSIX path relative to the folder (absolute when outside it). */
export function relativeToModel(file: string, dir: string): string {
  return inside(dir, file) ?? file;
}
