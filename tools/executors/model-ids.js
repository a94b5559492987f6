#!/usr/bin/env node
// Nx runtime input of each recipe's fetch target: prints the content ids of the recipe's models.
// Nx runs it on every build, so the answer is memoised: when the recipe, every file the ids were computed from
// (and the code that computes them) has the size, mtime and inode it had, the last answer is printed without
// loading the TypeScript bundle, and a shell script (fast-input.js) answers the next builds without node.
'use strict';
const { mkdirSync, readFileSync, renameSync, writeFileSync } = require('node:fs');
const { join, resolve } = require('node:path');
const { dropAnswer, recordAnswer, snapshot } = require('./fast-input');

const ROOT = resolve(__dirname, '..', '..');
const CODE = [
  'tools/executors/model-ids/impl.ts',
  'libs/resolve/content-id.ts',
  'libs/resolve/files.ts',
  'libs/resolve/resolve.ts',
  'libs/resolve/reference.ts',
  'libs/resolve/hf-cache.ts',
  'libs/input/index.ts',
].map((f) => join(ROOT, f));

const args = process.argv.slice(2);
const recipe = resolve(args[0] ?? 'moe.yml');
const memoFile = join(process.cwd(), '.nx', 'moe-forge', 'model-ids', `${recipe.replace(/[^\w.-]/g, '_')}.json`);

const KIND = 'model-ids';
const root = process.cwd();

/** The memo's answer and what it stands on, when every file it was computed from is as it was. */
function fromMemo() {
  try {
    const memo = JSON.parse(readFileSync(memoFile, 'utf8'));
    if (memo.recipe !== recipe || !Array.isArray(memo.deps) || typeof memo.text !== 'string') return null;
    // One stat per file, for the check and for the shell script alike.
    const snap = snapshot(memo.deps.map(([p]) => p));
    if (snap.paths.length !== memo.deps.length || snap.lines.some((l, i) => (l ?? 'absent') !== memo.deps[i][1])) return null;
    return { text: memo.text, snap };
  } catch {
    return null;
  }
}

const hit = fromMemo();
if (hit !== null) {
  process.stdout.write(hit.text);
  recordAnswer(root, KIND, args, hit.snap, hit.text);
} else {
  require('./load')('model-ids')(args).then(
    ({ text, deps }) => {
      if (deps) {
        // Taken after the ids, as the content-id cache takes its own: an edit while they were computed is seen next time.
        const snap = snapshot([...CODE, ...deps]);
        try {
          mkdirSync(join(memoFile, '..'), { recursive: true });
          const tmp = `${memoFile}.${process.pid}.tmp`;
          writeFileSync(tmp, JSON.stringify({ recipe, text, deps: snap.paths.map((p, i) => [p, snap.lines[i] ?? 'absent']) }) + '\n');
          renameSync(tmp, memoFile);
          recordAnswer(root, KIND, args, snap, text);
        } catch {
          // no memo: the next build computes the ids again (from the content-id cache)
          dropAnswer(root, KIND, args);
        }
      } else dropAnswer(root, KIND, args);
      process.stdout.write(text);
    },
    (e) => {
      dropAnswer(root, KIND, args);
      // Hashing must not fail on a bad recipe: the fetch stage reports it properly.
      process.stdout.write(`unresolved: ${e && e.message}\n`);
    },
  );
}
