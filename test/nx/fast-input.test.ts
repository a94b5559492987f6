import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, tempDir } from '../helpers/tmp';
import { recordWrite } from '../../tools/executors/output-state';
// Plain JavaScript module of the plugin (the runtime inputs load it without a transpiler).
import { contentsUnchanged, recordAnswer, runtimeCommand, scriptPath, snapshot, withContent } from '../../tools/executors/fast-input';
import { nowNs, RACY_NS, sleepUntil } from '../../libs/util/stat-key';

const root = tempDir('moe-forge-fast-input-');
const dir = join(root, "models with space/it's");
mkdirSync(dir, { recursive: true });
const a = join(dir, 'config.json');
const b = join(dir, 'model.safetensors');
const absent = join(dir, 'chat_template.jinja');
const answer = "ids ../../models/a 5557c1\nit's $HOME `id` \\n 'quoted'\n";
const args = ['workspace-models/x y/moe.yml'];
const script = join(root, scriptPath('model-ids', args));

// Recorded with an old mtime on every file, so that any write after it is seen (a filesystem's clock ticks coarsely),
// and once the racy window has passed (ctime cannot be set back): a racy snapshot gets no script.
const PAST = new Date('2020-01-01T00:00:00Z');
const settle = () => sleepUntil(nowNs() + RACY_NS);
function record(): boolean {
  for (const p of [a, b, dir]) if (existsSync(p)) utimesSync(p, PAST, PAST);
  settle();
  return recordAnswer(root, 'model-ids', args, snapshot([dir, a, b, absent]), answer);
}
function answered() {
  const r = spawnSync('sh', [script], { cwd: root, encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout };
}

test('the recorded script prints node\'s answer byte for byte while the files are as they were, and nothing once one changes', () => {
  writeFileSync(a, '{"hidden_size": 8}');
  writeFileSync(b, 'weights');
  assert.equal(record(), true);
  assert.deepEqual(answered(), { code: 0, stdout: answer });
  assert.deepEqual(answered(), { code: 0, stdout: answer }, 'answers again: the script changes nothing');

  // Same bytes written again (a new mtime): the script refuses, node computes.
  writeFileSync(a, '{"hidden_size": 8}');
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  assert.equal(record(), true);
  // Same size, other bytes.
  writeFileSync(b, 'WEIGHTS');
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  assert.equal(record(), true);
  // A file that was absent appears; a file is removed; a file is added to the folder; a file is replaced (new inode).
  writeFileSync(absent, '{{ x }}');
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  rmSync(absent);
  assert.equal(record(), true);
  rmSync(b);
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  writeFileSync(b, 'WEIGHTS');
  assert.equal(record(), true);
  writeFileSync(join(dir, 'extra.bin'), 'x');
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  assert.equal(record(), true);
  chmodSync(a, 0o600);
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  assert.equal(record(), true);
  assert.deepEqual(answered(), { code: 0, stdout: answer });
});

test('no script when stat does not print exactly what node saw: a file changed after the snapshot, or a stat without nanoseconds', () => {
  writeFileSync(a, '{"hidden_size": 8}');
  writeFileSync(b, 'weights');
  assert.equal(record(), true);
  const snap = snapshot([dir, a, b]);
  writeFileSync(a, '{"hidden_size": 16}');
  assert.equal(recordAnswer(root, 'model-ids', args, snap, answer), false);
  assert.ok(!existsSync(script), 'the old script is removed too');

  // A stat that prints whole seconds (as some do): never trusted.
  const bin = join(root, 'bin');
  mkdirSync(bin, { recursive: true });
  const real = spawnSync('sh', ['-c', 'command -v stat'], { encoding: 'utf8' }).stdout.trim();
  writeFileSync(join(bin, 'stat'), `#!/bin/sh\nfor x in "$@"; do shift; set -- "$@" "$(printf '%s' "$x" | sed 's/%\\.9Y/%Y/')"; done\nexec ${real} "$@"\n`);
  chmodSync(join(bin, 'stat'), 0o755);
  const path = process.env.PATH;
  process.env.PATH = `${bin}:${path}`;
  try {
    assert.equal(record(), false);
  } finally {
    process.env.PATH = path;
  }
  assert.ok(!existsSync(script));
  assert.equal(record(), true);
});

test('the runtime command runs the script and falls back to node; Windows runs node alone', () => {
  const posix = runtimeCommand('model-ids', args, 'linux');
  assert.equal(posix, `sh ${scriptPath('model-ids', args)} 2>/dev/null || node build/runtime/model-ids.js 'workspace-models/x y/moe.yml'`);
  assert.equal(runtimeCommand('model-ids', args, 'win32'), "node build/runtime/model-ids.js 'workspace-models/x y/moe.yml'");
  assert.notEqual(scriptPath('output-state', ['a', 'dist/stages/a']), scriptPath('output-state', ['b', 'dist/stages/a']));
  // No script yet for these arguments: node's answer (here a stand-in) is the command's whole output, stderr included.
  mkdirSync(join(root, 'build', 'runtime'), { recursive: true });
  writeFileSync(join(root, 'build', 'runtime', 'model-ids.js'), "process.stdout.write('from node ' + process.argv[2] + '\\n');");
  const other = ['workspace-models/z/moe.yml'];
  const r = spawnSync('sh', ['-c', runtimeCommand('model-ids', other, 'linux')], { cwd: root, encoding: 'utf8' });
  assert.deepEqual({ stdout: r.stdout, stderr: r.stderr }, { stdout: 'from node workspace-models/z/moe.yml\n', stderr: '' });
  // With a script that answers, node is not started.
  assert.equal(recordAnswer(root, 'model-ids', other, snapshot([a]), 'from the script\n'), true);
  const s = spawnSync('sh', ['-c', runtimeCommand('model-ids', other, 'linux')], { cwd: root, encoding: 'utf8' });
  assert.deepEqual({ stdout: s.stdout, stderr: s.stderr }, { stdout: 'from the script\n', stderr: '' });
});

test('a file edited in place and re-dated (touch -d, cp -p: same size, same mtime) stops the script: the line carries ctime (and the device)', () => {
  writeFileSync(a, '{"hidden_size": 8}');
  writeFileSync(b, 'weights');
  assert.equal(record(), true);
  assert.deepEqual(answered(), { code: 0, stdout: answer });
  // Damaged in place, same size, mtime set back to what it was: only ctime tells.
  writeFileSync(b, 'WEIGHTS');
  utimesSync(b, PAST, PAST);
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  // The line GNU stat prints carries mtime and ctime to the nanosecond, inode and device.
  assert.equal(record(), true);
  const line = snapshot([b]).lines[0]!;
  const st = statSync(b, { bigint: true });
  assert.equal(line, `${b}:7:${PAST.getTime() / 1000}.000000000:${st.ctimeNs / 1_000_000_000n}.${String(st.ctimeNs % 1_000_000_000n).padStart(9, '0')}:${st.ino}:${st.dev}:${st.mode.toString(16)}`);
});

test('racy: a snapshot of a file changed within a second of it gets no script (a same-tick edit would keep its stats); once settled, it does', () => {
  writeFileSync(a, '{"hidden_size": 8}');
  const snap = snapshot([dir, a, b]);
  assert.equal(snap.racy, true);
  assert.equal(recordAnswer(root, 'model-ids', args, snap, answer), false);
  assert.ok(!existsSync(script));
  settle();
  const later = snapshot([dir, a, b]);
  assert.equal(later.racy, false);
  assert.equal(recordAnswer(root, 'model-ids', args, later, answer), true);
  assert.deepEqual(answered(), { code: 0, stdout: answer });
});

test("racy: write's runtime input gives no script while the record it stands on was written within a second; then it does", () => {
  const ws = join(root, 'ws');
  const folder = join(ws, 'dist', 'models', 'p');
  mkdirSync(folder, { recursive: true });
  writeFileSync(join(folder, 'model.safetensors'), 'weights');
  utimesSync(join(folder, 'model.safetensors'), PAST, PAST);
  recordWrite(ws, 'p', folder, ['model.safetensors'], false); // the record: .nx/moe-forge/outputs/p.json, just written
  const stateArgs = ['p', 'dist/stages/p'];
  const tool = join(ROOT, 'build', 'runtime', 'output-state.js');
  const token = spawnSync(process.execPath, [tool, ...stateArgs], { cwd: ws, encoding: 'utf8' }).stdout;
  assert.match(token, /^write-token [0-9a-f]{24}\n$/);
  assert.ok(!existsSync(join(ws, scriptPath('output-state', stateArgs))), 'no script from a racy look');
  settle();
  assert.equal(spawnSync(process.execPath, [tool, ...stateArgs], { cwd: ws, encoding: 'utf8' }).stdout, token);
  const r = spawnSync('sh', [join(ws, scriptPath('output-state', stateArgs))], { cwd: ws, encoding: 'utf8' });
  assert.deepEqual({ code: r.status, stdout: r.stdout }, { code: 0, stdout: token });
});

test('a file checked by content (one Nx rewrites, same bytes, on every cache hit): the same bytes written again keep the script; other bytes, same size and re-dated, or the file gone, stop it', () => {
  writeFileSync(a, '{"hidden_size": 8}');
  writeFileSync(b, 'weights');
  const restored = join(root, 'models.json');
  writeFileSync(restored, '{"models": []}');
  const recordWithContent = () => {
    for (const p of [a, b, dir, restored]) utimesSync(p, PAST, PAST);
    settle();
    return recordAnswer(root, 'model-ids', args, withContent(snapshot([dir, a, b]), restored), answer);
  };
  assert.equal(recordWithContent(), true);
  assert.deepEqual(answered(), { code: 0, stdout: answer });
  // Rewritten with the same bytes (new mtime and ctime, as Nx restores an output): still answers.
  writeFileSync(restored, '{"models": []}');
  assert.deepEqual(answered(), { code: 0, stdout: answer });
  // Other bytes, same size, mtime set back: stops.
  writeFileSync(restored, '{"models": {}}');
  utimesSync(restored, PAST, PAST);
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  assert.equal(recordWithContent(), true);
  rmSync(restored);
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  // Recorded absent: answers while it stays absent, stops once it appears.
  const snap = withContent(snapshot([dir, a, b]), restored);
  assert.deepEqual(snap.contents, [{ path: restored, sha256: null }]);
  settle();
  assert.equal(recordAnswer(root, 'model-ids', args, snap, answer), true);
  assert.deepEqual(answered(), { code: 0, stdout: answer });
  writeFileSync(restored, '{"models": []}');
  assert.deepEqual(answered(), { code: 1, stdout: '' });
  // Bytes changed between the look and the answer: the caller sees it (output-state.ts then records no script).
  assert.equal(contentsUnchanged(snap), false);
  rmSync(restored);
  assert.equal(contentsUnchanged(snap), true);
});
