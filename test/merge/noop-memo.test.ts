import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../helpers/cli';
import { FIXTURES, ROOT, tempDir } from '../helpers/tmp';

// An unchanged re-run of the command is answered from the memo of the last one without loading the merge
// (libs/cli/noop-memo.ts); any change to what the merge read or wrote runs the merge again.

const recipe = (models: string) => readFileSync(join(FIXTURES, 'parity', 'mixtral-hidden.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, models);

/** The command under a hook that says, on exit, whether the merge's bundle (build/cli.js) was loaded. */
async function command(d: string, args: string[]) {
  const hook = join(d, 'hook.js');
  writeFileSync(hook, `process.on('exit', () => process.stderr.write('CLI_LOADED=' + Object.keys(require.cache).some((f) => f.endsWith('/build/cli.js')) + '\\n'));\n`);
  const r = await run(process.execPath, ['--require', hook, join(ROOT, 'bin', 'mergekit-moe.js'), ...args], d, { MOE_FORGE_CACHE: join(d, 'cache') });
  const loaded = /CLI_LOADED=true/.test(r.stderr);
  return { code: r.exitCode, out: r.stdout, err: r.stderr.replace(/CLI_LOADED=\w+\n?/, ''), loaded };
}

/** Past the clock granularity within which a just-written file's key is not trusted (libs/util/stat-key.js). */
const settle = () => new Promise((r) => setTimeout(r, 1100));

test('an unchanged re-run is answered from the memo, with the same lines; a changed input, an added file or a damaged memo runs the merge', async () => {
  const d = tempDir();
  const models = join(d, 'models');
  cpSync(join(FIXTURES, 'tiny-llama'), models, { recursive: true });
  writeFileSync(join(d, 'moe.yml'), recipe(models));
  // --trust-remote-code: a warning the memo must say again.
  const args = ['moe.yml', 'out', '--trust-remote-code'];
  const cold = await command(d, args);
  assert.equal(cold.code, 0, cold.err);
  assert.match(cold.out, /^wrote /);
  assert.ok(cold.loaded);
  await settle();
  // The first no-op runs the merge (the files just written were too new to vouch for) and records the memo.
  const first = await command(d, args);
  assert.equal(first.code, 0, first.err);
  assert.ok(first.loaded, 'the first no-op runs the merge');
  assert.match(first.out, /^unchanged /);
  assert.equal(readdirSync(join(d, 'cache', 'noop')).length, 1, 'a memo is recorded');
  const memo = await command(d, args);
  assert.equal(memo.code, 0, memo.err);
  assert.equal(memo.loaded, false, 'answered without loading the merge');
  assert.equal(memo.out, first.out);
  assert.equal(memo.err, first.err);
  assert.match(memo.err, /WARNING: --trust-remote-code/);

  // Another command line (a flag) has no memo.
  const other = await command(d, ['moe.yml', 'out']);
  assert.ok(other.loaded, 'a different command line runs the merge');

  // A model file rewritten with the same bytes: its key changed, so the merge runs (and finds the output current).
  const config = join(models, 'tiny-b', 'config.json');
  writeFileSync(config, readFileSync(config));
  const touched = await command(d, args);
  assert.ok(touched.loaded, 'a rewritten model file runs the merge');
  assert.match(touched.out, /^unchanged /);

  // A file added to the output folder, or to a model folder: the merge runs.
  await settle();
  await command(d, args); // a memo of the files as they are now, if the last run's was too new to take
  assert.equal((await command(d, args)).loaded, false, 'a new memo holds');
  writeFileSync(join(d, 'out', 'NOTES.md'), 'mine\n');
  assert.equal((await command(d, args)).loaded, true, 'a file added to the output runs the merge');
  writeFileSync(join(models, 'tiny-a', 'extra.txt'), 'x\n');
  assert.equal((await command(d, args)).loaded, true, 'a file added to a model folder runs the merge');

  // The recipe edited: the merge runs and writes.
  await settle();
  await command(d, args);
  assert.equal((await command(d, args)).loaded, false);
  writeFileSync(join(d, 'moe.yml'), recipe(models).replace(/\n*$/, '\n# a comment\n'));
  const edited = await command(d, args);
  assert.ok(edited.loaded);

  // A damaged memo, or one of another shape, is not read: the merge runs.
  await settle();
  await command(d, args);
  for (const name of readdirSync(join(d, 'cache', 'noop'))) writeFileSync(join(d, 'cache', 'noop', name), '{"version":1,"files":{},"dirs":{},"warnings":[],"line":"unchanged FAKE"}\n');
  const damaged = await command(d, args);
  assert.ok(damaged.loaded, 'a memo that vouches for no file is not taken');
  assert.doesNotMatch(damaged.out, /FAKE/);
});

test('runs back to back, each well within the racy window of the one before, still reach the memo: recording the output folder touches none of its files', async () => {
  const d = tempDir();
  const models = join(d, 'models');
  cpSync(join(FIXTURES, 'tiny-llama'), models, { recursive: true });
  writeFileSync(join(d, 'moe.yml'), recipe(models));
  const args = ['moe.yml', 'out'];
  assert.equal((await command(d, args)).code, 0);
  // The output written just now is racy for about a second; no-op runs follow at once. (A probe of the file
  // system's clock that chmod-ed the stamp kept it racy for each next run: no run ever recorded the memo.)
  const runs: boolean[] = [];
  for (let i = 0; i < 5 && !runs.includes(false); i++) {
    const r = await command(d, args);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^unchanged /);
    runs.push(r.loaded);
  }
  assert.ok(runs.includes(false), `a run answered from the memo (merge loaded per run: ${runs.join(', ')})`);
});

test('a run with --report or --verbose always runs the merge', async () => {
  const d = tempDir();
  writeFileSync(join(d, 'moe.yml'), recipe(join(FIXTURES, 'tiny-llama')));
  assert.equal((await command(d, ['moe.yml', 'out'])).code, 0);
  await settle();
  await command(d, ['moe.yml', 'out']);
  assert.equal((await command(d, ['moe.yml', 'out'])).loaded, false);
  assert.equal((await command(d, ['moe.yml', 'out', '--verbose'])).loaded, true);
  await settle();
  const r1 = await command(d, ['moe.yml', 'out', '--report', join(d, 'r.html')]);
  assert.equal(r1.code, 0, r1.err);
  await settle();
  assert.equal((await command(d, ['moe.yml', 'out', '--report', join(d, 'r.html')])).loaded, true, 'no memo with a report');
});
