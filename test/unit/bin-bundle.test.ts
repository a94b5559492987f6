import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readdirSync, readFileSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, tempDir } from '../helpers/tmp';

/** A checkout of its own (bin and libs copied, node_modules linked): its .nx folder and sources are this test's alone. */
function checkout(): string {
  const d = tempDir();
  for (const f of ['bin', 'libs']) cpSync(join(ROOT, f), join(d, f), { recursive: true });
  symlinkSync(join(ROOT, 'node_modules'), join(d, 'node_modules'));
  return d;
}

const help = (d: string) => spawnSync(process.execPath, [join(d, 'bin', 'mergekit-moe.js'), '--help'], { encoding: 'utf8' });

test('mergekit-moe runs from an esbuild bundle of its sources and the forward worker, one bundle per source state', async () => {
  const d = checkout();
  const r = help(d);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Usage: mergekit-moe CONFIG_PATH OUT_PATH/);
  const cli = join(d, '.nx', 'moe-forge', 'cli');
  const [first, ...more] = readdirSync(cli);
  assert.deepEqual(more, [], 'one bundle');
  assert.deepEqual(readdirSync(join(cli, first!)).sort(), ['cli.js', 'worker.js']);
  // A source that changes gets a new bundle; the old one goes.
  const t = new Date(Date.now() + 5000);
  utimesSync(join(d, 'libs', 'cli', 'args.ts'), t, t);
  assert.equal(help(d).status, 0);
  const now = readdirSync(cli);
  assert.equal(now.length, 1);
  assert.notEqual(now[0], first, 'rebuilt for the changed source');
});

test('a source replaced in place with cp -p (same size, same mtime) gets a new bundle: the fingerprint has ctime', () => {
  const d = checkout();
  assert.equal(help(d).status, 0);
  const cli = join(d, '.nx', 'moe-forge', 'cli');
  const [first] = readdirSync(cli);
  // Same length, other text, the old file's times: only ctime tells.
  const src = join(d, 'libs', 'cli', 'mergekit-moe.ts');
  const copy = join(d, 'mergekit-moe.ts');
  const text = readFileSync(src, 'utf8');
  writeFileSync(copy, text.replace('Usage: mergekit-moe', 'USAGE: mergekit-moe'));
  assert.equal(spawnSync('touch', ['-r', src, copy]).status, 0);
  assert.equal(spawnSync('cp', ['-p', copy, src]).status, 0);
  const r = help(d);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /USAGE: mergekit-moe/, 'the bundle was built from the new source');
  assert.notEqual(readdirSync(cli)[0], first);
});

test('where no bundle can be written, mergekit-moe still runs, compiling its sources with tsx', () => {
  const d = checkout();
  writeFileSync(join(d, '.nx'), 'not a folder'); // the bundle's folder cannot be made
  const r = help(d);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Usage: mergekit-moe CONFIG_PATH OUT_PATH/);
});
