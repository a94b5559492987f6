// Nx runtime input of each recipe's fetch target (run as build/runtime/model-ids.js): prints the content ids of the recipe's models.
// Nx runs it on every build, so the answer is memoised: when the recipe, every file the ids were computed from
// (and the code that computes them) has the stat key it had (libs/util/stat-key.js), the last answer is printed
// without loading the built code (build/executors/model-ids.js), and a shell script (fast-input.ts) answers the next builds without node.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { dropAnswer, recordAnswer, snapshot, type Snapshot } from './fast-input';
import { builtModule, RUNTIME_ROOT } from './runtime-root';

type Compute = (args: string[]) => Promise<{ text: string; deps: string[] | null }>;

// The code the answer comes from (this file included: build/runtime/model-ids.js is built from it).
const CODE = [
  'tools/executors/model-ids.ts',
  'tools/executors/fast-input.ts',
  'tools/executors/model-ids/impl.ts',
  'libs/resolve/content-id.ts',
  'libs/resolve/files.ts',
  'libs/resolve/resolve.ts',
  'libs/resolve/reference.ts',
  'libs/resolve/hf-cache.ts',
  'libs/util/stat-key.js',
  'libs/input/index.ts',
].map((f) => join(RUNTIME_ROOT, f));

const KIND = 'model-ids';

/** Where the memo of `node build/runtime/model-ids.js <args>` run in `root` lives, and the recipe it is for. */
function memoOf(root: string, args: string[]): { recipe: string; file: string } {
  const recipe = resolve(root, args[0] ?? 'moe.yml');
  return { recipe, file: join(root, '.nx', 'moe-forge', 'model-ids', `${recipe.replace(/[^\w.-]/g, '_')}.json`) };
}

/** The memo's answer and what it stands on, when every file it was computed from is as it was. */
export function fromMemo(root: string, args: string[]): { text: string; snap: Snapshot } | null {
  const { recipe, file } = memoOf(root, args);
  try {
    const memo = JSON.parse(readFileSync(file, 'utf8')) as { recipe?: unknown; deps?: unknown; text?: unknown };
    if (memo.recipe !== recipe || typeof memo.text !== 'string' || !Array.isArray(memo.deps)) return null;
    // Read back from disk: trusted only as pairs of strings.
    const deps = memo.deps as unknown[];
    if (!deps.every((d): d is [string, string] => Array.isArray(d) && d.length === 2 && typeof d[0] === 'string' && typeof d[1] === 'string')) return null;
    // One stat per file, for the check and for the shell script alike.
    const snap = snapshot(deps.map(([p]) => p));
    if (snap.paths.length !== deps.length || snap.lines.some((l, i) => (l ?? 'absent') !== deps[i]![1])) return null;
    return { text: memo.text, snap };
  } catch {
    return null;
  }
}

const same = (a: Snapshot, b: Snapshot) => a.paths.length === b.paths.length && a.paths.every((p, i) => p === b.paths[i] && a.lines[i] === b.lines[i]);

/**
 * `compute(args)` (model-ids/impl.ts) run in `root`, memoised only where the answer is known to stand on the stats
 * recorded: the files are looked at, the ids computed again (content-id memo hits: a stat per file) and the files
 * looked at once more; equal looks mean nothing changed around the second computation (ctime never goes back).
 * Stats taken after a single computation would record an edit made during it as the new stats with the old ids,
 * and fetch would stay a cache hit for good.
 */
export async function answer(root: string, args: string[], compute: Compute): Promise<string> {
  const { recipe, file: memoFile } = memoOf(root, args);
  let r = await compute(args);
  for (let i = 0; i < 3 && r.deps; i++) {
    const seen = snapshot([...CODE, ...r.deps]);
    const again = await compute(args);
    if (again.deps && same(seen, snapshot([...CODE, ...again.deps]))) {
      // Racy files (changed within a tick of the look) are not memoised: their stats may not show a same-tick edit.
      if (seen.racy) {
        r = { text: again.text, deps: null };
        break;
      }
      try {
        mkdirSync(join(memoFile, '..'), { recursive: true });
        const tmp = `${memoFile}.${process.pid}.tmp`;
        writeFileSync(tmp, JSON.stringify({ recipe, text: again.text, deps: seen.paths.map((p, j) => [p, seen.lines[j] ?? 'absent']) }) + '\n');
        renameSync(tmp, memoFile);
        recordAnswer(root, KIND, args, seen, again.text);
        return again.text;
      } catch {
        r = { text: again.text, deps: null }; // no memo: the next build computes the ids again (from the content-id cache)
        break;
      }
    }
    r = again;
  }
  dropAnswer(root, KIND, args);
  return r.text;
}

if (require.main === module) {
  const root = process.cwd();
  const args = process.argv.slice(2);
  const hit = fromMemo(root, args);
  if (hit !== null) {
    process.stdout.write(hit.text);
    recordAnswer(root, KIND, args, hit.snap, hit.text);
  } else {
    // The stages' code only now: the memo and the shell script answer without it.
    Promise.resolve()
      .then(() => answer(root, args, builtModule<Compute>('executors/model-ids.js')))
      .then(
      (text) => process.stdout.write(text),
      (e: unknown) => {
        dropAnswer(root, KIND, args);
        // Hashing must not fail on a bad recipe: the fetch stage reports it properly.
        process.stdout.write(`unresolved: ${e instanceof Error ? e.message : String(e)}\n`);
      },
    );
  }
}
