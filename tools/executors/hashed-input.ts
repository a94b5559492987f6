import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { isAbsolute, join, relative, sep } from 'node:path';
import ignore from 'ignore';
import { ForgeError } from '../../libs/errors';

export interface HashedInput {
  /** The option naming the file, and what its edits should re-run, for the message. */
  option: string;
  reruns: string;
  projectRoot: string;
  workspaceRoot: string;
  /** Whether the target's inputs take a file at this path (relative to the project's folder, with /). */
  accepts(rel: string): boolean;
  /** Those files, for the message: "a .yml, .yaml or .jsonl file". */
  accepted: string;
}

/**
 * A file a stage reads must be one Nx hashes for the task, or a cached result would outlive its edits. Nx hashes
 * the project's files that match the target's inputs and that no .gitignore or .nxignore excludes, and a link
 * out of the workspace is not followed. So the file must, by its real path, lie inside the project's folder,
 * be one the inputs take, and not be ignored; otherwise it is refused, saying why.
 */
export function checkHashedInput(file: string, o: HashedInput): void {
  // A missing file is for the reader to report, unless its very path is outside the folder.
  const exists = existsSync(file);
  const real = exists ? realpathSync(file) : file;
  const root = exists ? realpathSync(o.projectRoot) : o.projectRoot;
  const via = real !== file ? ` (it is a link to ${real})` : '';
  const rel = relative(root, real);
  const refuse = (why: string, fix: string) => new ForgeError('bad_option', `${why}${via}: Nx would not see its edits and would replay a stale result; ${fix}`, { file, field: o.option });
  const outside = rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel);
  if (outside) throw refuse(`${o.option} must be a file inside the recipe's folder ${o.projectRoot}, so that editing it re-runs ${o.reruns}`, "put the file itself (not a link to it) in the recipe's folder");
  if (!exists) return;
  if (!o.accepts(rel.split(sep).join('/'))) throw refuse(`${o.option} must be ${o.accepted} in the recipe's folder`, 'name that file');
  const ignoredBy = ignoreFileExcluding(real, realpathSync(o.workspaceRoot));
  if (ignoredBy) throw refuse(`${o.option} must not be git-ignored, and ${ignoredBy} excludes it`, `move it out of what ${ignoredBy} excludes`);
}

/** The .gitignore or .nxignore (between the workspace root and the file) that excludes it, as Nx reads them; else null. */
function ignoreFileExcluding(file: string, workspaceRoot: string): string | null {
  const rel = relative(workspaceRoot, file);
  if (rel.startsWith('..') || isAbsolute(rel)) return null;
  const parts = rel.split(sep);
  let verdict: string | null = null;
  for (let depth = 0; depth < parts.length; depth++) {
    const dir = join(workspaceRoot, ...parts.slice(0, depth));
    for (const name of ['.gitignore', '.nxignore']) {
      let text: string;
      try {
        text = readFileSync(join(dir, name), 'utf8');
      } catch {
        continue;
      }
      const ig = ignore().add(text);
      const rules = relative(workspaceRoot, join(dir, name));
      // An excluded folder excludes everything below it: nothing re-includes from there (git's rule).
      for (let k = depth + 1; k < parts.length; k++) if (ig.ignores(parts.slice(depth, k).join('/') + '/')) return rules;
      // The file itself: a deeper file's rule, or a later !pattern, overrides an earlier one.
      const r = ig.test(parts.slice(depth).join('/'));
      if (r.ignored) verdict = rules;
      else if (r.unignored) verdict = null;
    }
  }
  return verdict;
}
