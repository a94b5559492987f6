import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergekitMoe } from '../helpers/cli';
import { copyModel, tempDir, TINY } from '../helpers/tmp';

// Errors that used to be stack traces: one line naming file or field, exit code 1, the stack only with -v.
const dir = tempDir();
mkdirSync(join(dir, 'models'));
for (const n of ['a', 'b'] as const) copyModel(TINY(n), join(dir, 'models', n));
const recipe = (gate: string, prompt = 'code') => `base_model: models/a
gate_mode: ${gate}
experts:
  - source_model: models/a
    positive_prompts: ["math"]
  - source_model: models/b
    positive_prompts: ["${prompt}"]
`;

function oneLine(r: { exitCode?: number; stderr: string }, re: RegExp) {
  assert.equal(r.exitCode, 1, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0]!, re);
}

test('a YAML alias bomb is refused as "too many aliases" with file and line, and -v adds the stack', async () => {
  const levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
  for (let i = 1; i < 6; i++) levels.push(`${'abcdef'[i]}: &${'abcdef'[i]} [${Array(9).fill(`*${'abcdef'[i - 1]}`).join(',')}]`);
  writeFileSync(join(dir, 'bomb.yml'), `${levels.join('\n')}\n${recipe('random')}`);
  oneLine(await mergekitMoe(['bomb.yml', 'out-bomb'], dir), /^error: .*bomb\.yml:2:\d+: too many aliases/);
  const v = await mergekitMoe(['bomb.yml', 'out-bomb', '-v'], dir);
  assert.equal(v.exitCode, 1);
  assert.match(v.stderr, /too many aliases[\s\S]*\n\s+at /);
  assert.ok(!existsSync(join(dir, 'out-bomb')));
});

test('an output path that is a file is one line naming it', async () => {
  writeFileSync(join(dir, 'moe.yml'), recipe('random'));
  writeFileSync(join(dir, 'taken'), 'x');
  oneLine(await mergekitMoe(['moe.yml', 'taken'], dir), /^error: .*taken: output path is a file, not a folder$/);
  oneLine(await mergekitMoe(['moe.yml', 'taken/out'], dir), /^error: .*taken: output path .*taken\/out lies under .*taken, which is a file$/);
});

test('a prompt longer than the base model context names the expert, the prompt, the token count and the limit', async () => {
  writeFileSync(join(dir, 'long.yml'), recipe('hidden', Array(200).fill('word').join(' ')));
  oneLine(await mergekitMoe(['long.yml', 'out-long'], dir), /^error: .*long\.yml:6:\d+, field experts\[1\]: prompt "word word .*\.\.\." of experts\[1\] \(models\/b\) is \d{3} tokens long, more than the 128 of the base model models\/a \(max_position_embeddings\)/);
  assert.ok(!existsSync(join(dir, 'out-long')));
});

test('an unusable prompt cache (a file where its folder should be) is a warning; the merge goes on without it', async () => {
  writeFileSync(join(dir, 'hidden.yml'), recipe('hidden'));
  writeFileSync(join(dir, 'cache-file'), 'not a folder');
  const r = await mergekitMoe(['hidden.yml', 'out-nocache'], dir, { MOE_FORGE_CACHE: join(dir, 'cache-file') });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stderr, /WARNING: the cache .*cache-file cannot be used \(ENOTDIR/);
  assert.ok(existsSync(join(dir, 'out-nocache', 'model.safetensors.index.json')));
});

test('XDG_CACHE_HOME set but empty never puts the cache in the working directory', async () => {
  const home = tempDir();
  const cwd = tempDir();
  writeFileSync(join(cwd, 'moe.yml'), recipe('random').replaceAll('models/', `${join(dir, 'models')}/`));
  const r = await mergekitMoe(['moe.yml', join(home, 'out')], cwd, { MOE_FORGE_CACHE: '', XDG_CACHE_HOME: '', HOME: home });
  assert.equal(r.exitCode, 0, r.stderr);
  assert.deepEqual(readdirSync(cwd), ['moe.yml']);
  assert.ok(existsSync(join(home, '.cache', 'moe-forge')), 'the cache is in ~/.cache/moe-forge');
});

test('--version prints the package version and exits 0; --help lists it', async () => {
  const { version } = JSON.parse((await import('node:fs')).readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
  const r = await mergekitMoe(['--version'], dir);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.equal(r.stdout.trim(), `mergekit-moe (moe-forge) ${version}`);
  const h = await mergekitMoe(['--help'], dir);
  assert.match(h.stdout, /--version +Print the version of moe-forge and exit\./);
});

test('a FIFO or /dev/null given as the recipe or the held-out prompts: one line saying it is not a regular file, no hang', async () => {
  writeFileSync(join(dir, 'plain.yml'), recipe('random'));
  execFileSync('mkfifo', [join(dir, 'held-out.yml')]);
  oneLine(await mergekitMoe(['plain.yml', 'out-fifo', '--report', 'r.html', '--eval-prompts', 'held-out.yml'], dir), /^error: held-out\.yml: the held-out prompts file is not a regular file \(a FIFO\)$/);
  oneLine(await mergekitMoe(['/dev/null', 'out-fifo'], dir), /^error: \/dev\/null: the recipe is not a regular file \(a character device\)$/);
  assert.ok(!existsSync(join(dir, 'out-fifo')));
});
