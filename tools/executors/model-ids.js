#!/usr/bin/env node
// Nx runtime input of each recipe's fetch target: prints the content ids of the recipe's models.
// Nx runs it on every build, so the answer is memoised in plain node: when the recipe, every file the ids were
// computed from (and the code that computes them) has the size, mtime and inode it had, the last answer is
// printed without loading the TypeScript bundle (a process start, not ~0.5 s more).
'use strict';
const { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } = require('node:fs');
const { join, resolve } = require('node:path');

const ROOT = resolve(__dirname, '..', '..');
const CODE = [
  'tools/executors/model-ids/impl.ts',
  'libs/resolve/content-id.ts',
  'libs/resolve/files.ts',
  'libs/resolve/resolve.ts',
  'libs/resolve/reference.ts',
  'libs/resolve/hf-cache.ts',
].map((f) => join(ROOT, f));

function signature(p) {
  try {
    const st = statSync(p);
    return `${st.isDirectory() ? 'd' : 'f'}:${st.size}:${st.mtimeMs}:${st.ino}`;
  } catch {
    return 'absent';
  }
}

const args = process.argv.slice(2);
const recipe = resolve(args[0] ?? 'moe.yml');
const memoFile = join(process.cwd(), '.nx', 'moe-forge', 'model-ids', `${recipe.replace(/[^\w.-]/g, '_')}.json`);

function fromMemo() {
  try {
    const memo = JSON.parse(readFileSync(memoFile, 'utf8'));
    if (memo.recipe !== recipe || !Array.isArray(memo.deps)) return null;
    for (const [p, sig] of memo.deps) if (signature(p) !== sig) return null;
    return memo.text;
  } catch {
    return null;
  }
}

const hit = fromMemo();
if (hit !== null) process.stdout.write(hit);
else {
  require('./load')('model-ids')(args).then(
    ({ text, deps }) => {
      if (deps) {
        try {
          mkdirSync(join(memoFile, '..'), { recursive: true });
          const tmp = `${memoFile}.${process.pid}.tmp`;
          writeFileSync(tmp, JSON.stringify({ recipe, text, deps: [...new Set([...CODE, ...deps])].map((p) => [p, signature(p)]) }) + '\n');
          renameSync(tmp, memoFile);
        } catch {
          // no memo: the next build computes the ids again (from the content-id cache)
        }
      }
      process.stdout.write(text);
    },
    (e) => {
      // Hashing must not fail on a bad recipe: the fetch stage reports it properly.
      process.stdout.write(`unresolved: ${e && e.message}\n`);
    },
  );
}
