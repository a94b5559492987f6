/** What a stage reads through an option must be what Nx hashes: the rule alone, on a real file system. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { checkHashedInput } from '../../tools/executors/hashed-input';
import { tempDir } from '../helpers/tmp';

const ws = tempDir();
const project = join(ws, 'workspace-models', 'm');
mkdirSync(join(project, 'eval', 'private'), { recursive: true });
const check = (rel: string) =>
  checkHashedInput(join(project, rel), { option: 'evalPrompts', reruns: 'the report', projectRoot: project, workspaceRoot: ws, accepts: (r) => /\.(ya?ml|jsonl)$/.test(r), accepted: 'a .yml, .yaml or .jsonl file' });
for (const f of ['eval/a.yml', 'eval/keep.yml', 'eval/private/b.yml', 'eval/notes.txt', 'eval/c.jsonl']) writeFileSync(join(project, f), '[]\n');

test('.gitignore and .nxignore as Nx reads them: nested files, negation, an excluded folder excludes all below', () => {
  writeFileSync(join(ws, '.gitignore'), 'node_modules\n*.jsonl\n');
  writeFileSync(join(project, 'eval', '.gitignore'), 'private/\n*.yml\n!keep.yml\n');
  writeFileSync(join(ws, '.nxignore'), 'workspace-models/m/eval/private/b.yml\n');
  assert.doesNotThrow(() => check('eval/keep.yml'));
  assert.throws(() => check('eval/a.yml'), /field evalPrompts: evalPrompts must not be git-ignored, and workspace-models\/m\/eval\/\.gitignore excludes it: Nx would not see its edits/);
  assert.throws(() => check('eval/c.jsonl'), /and \.gitignore excludes it/);
  assert.throws(() => check('eval/private/b.yml'), /and \.nxignore excludes it|eval\/\.gitignore excludes it/);
  assert.throws(() => check('eval/notes.txt'), /evalPrompts must be a \.yml, \.yaml or \.jsonl file in the recipe's folder/);
});

test('a link is judged by where it leads; a missing file is left to the reader unless its path is outside', () => {
  const outside = tempDir();
  writeFileSync(join(outside, 'x.yml'), '[]\n');
  symlinkSync(join(outside, 'x.yml'), join(project, 'out.yml'));
  assert.throws(() => check('out.yml'), /evalPrompts must be a file inside the recipe's folder .*, so that editing it re-runs the report \(it is a link to .*x\.yml\)/);
  symlinkSync('eval/keep.yml', join(project, 'in.yml'));
  assert.doesNotThrow(() => check('in.yml'));
  symlinkSync(outside, join(project, 'linked-dir'));
  assert.throws(() => check('linked-dir/x.yml'), /must be a file inside the recipe's folder/);
  assert.doesNotThrow(() => check('missing.yml'));
  assert.throws(() => check('../../elsewhere.yml'), /must be a file inside the recipe's folder/);
});
