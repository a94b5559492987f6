import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, tempDir } from '../helpers/tmp';

function tree(files: Record<string, string>): string {
  const dir = tempDir('moe-forge-imports-');
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

function check(dir: string) {
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts', 'check-imports.mjs'), dir], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout + r.stderr };
}

test('a cross-library import that bypasses the index is refused, naming the file and the index to use', () => {
  const dir = tree({
    'libs/a/index.ts': "export * from './inner';\n",
    'libs/a/inner.ts': 'export const x = 1;\n',
    'libs/b/index.ts': "import { x } from '../a/inner';\nexport const y = x;\n",
    'tools/run.ts': "import { y } from '../libs/b';\n// import { x } from '../libs/a/inner'; (a comment is not an import)\nexport default y;\n",
  });
  const r = check(dir);
  assert.equal(r.status, 1);
  assert.match(r.out, /^libs\/b\/index\.ts: imports \.\.\/a\/inner \(libs\/a\/inner\.ts\); import libs\/a through its index\.ts$/m);
  assert.doesNotMatch(r.out, /tools\/run\.ts/);
  assert.match(r.out, /1 import problem\(s\)/);
});

test('a cycle between libraries is refused with the files that close it; inside a library files import freely', () => {
  const dir = tree({
    'libs/a/index.ts': "export { z } from './z';\nimport { y } from '../b';\nexport const x = y;\n",
    'libs/a/z.ts': "import { x } from './index';\nexport const z = 2;\nvoid x;\n",
    'libs/b/index.ts': "const a = require('../a');\nexport const y = a.z;\n",
  });
  const r = check(dir);
  assert.equal(r.status, 1);
  assert.match(r.out, /library cycle: a -> b -> a: a -> b \(libs\/a\/index\.ts\); b -> a \(libs\/b\/index\.ts\)/);
});

test('a tree whose libraries meet only through their indexes passes', () => {
  const dir = tree({
    'libs/a/index.ts': "export * from './inner';\n",
    'libs/a/inner.ts': 'export const x = 1;\n',
    'libs/b/index.ts': "import { x } from '../a';\nexport const y = x;\n",
    'bench/run.ts': "import { y } from '../libs/b/index';\nexport default y;\n",
  });
  const r = check(dir);
  assert.equal(r.status, 0, r.out);
  assert.match(r.out, /every cross-library import through an index, no cycle/);
});
