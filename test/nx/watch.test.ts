import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace, TINY_BF16_RECIPE } from '../helpers/workspace';
import { alive, descendants } from '../helpers/processes';

/** File -> inode of a folder: which files a later build replaced. */
const inodes = (dir: string) => Object.fromEntries(readdirSync(dir).map((f) => [f, statSync(join(dir, f)).ino]));

test('nx run x:watch builds the model folder, again on each save of moe.yml, and a later nx build keeps what it wrote', async () => {
  const ws = throwawayWorkspace();
  cpSync(join(ROOT, 'test', 'fixtures', 'tiny-llama'), join(ws, 'models'), { recursive: true });
  addRecipe(ws, 'moe', TINY_BF16_RECIPE);
  const recipe = join(ws, 'workspace-models', 'moe', 'moe.yml');
  const out = join(ws, 'dist', 'models', 'moe');
  const env = { ...process.env, FORCE_COLOR: '0', NX_DAEMON: 'false', NX_NO_CLOUD: 'true', CI: 'true', NX_TUI: 'false', NX_ISOLATE_PLUGINS: 'false', MOE_FORGE_CACHE: join(ws, '.moe-cache'), NX_SOCKET_DIR: join(ws, '.nx-sockets') };
  const child = spawn(process.execPath, [join(ws, 'node_modules', 'nx', 'dist', 'bin', 'nx.js'), 'run', 'moe:watch'], { cwd: ws, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (b) => (output += b));
  child.stderr!.on('data', (b) => (output += b));
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  let kids: number[] = [];
  const builds = () => output.match(/wrote dist\/models\/moe \(\d+ shards?\) in \d+\.\d\d s/g)?.length ?? 0;
  const wait = async (what: string, cond: () => boolean) => {
    for (let i = 0; i < 2400 && !cond() && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 25));
    assert.ok(cond(), `${what}\n${output}`);
  };
  try {
    await wait('the first build', () => builds() === 1 && /watching moe\.yml/.test(output));
    writeFileSync(recipe, TINY_BF16_RECIPE.replace('"Write a python function that adds numbers"', '"Write a python function that adds numbers", "Fix this failing test"'));
    await wait('a build after the save', () => builds() === 2);
    assert.match(readFileSync(join(out, 'mergekit_moe_config.yml'), 'utf8'), /Fix this failing test/);
  } finally {
    kids = descendants(child.pid!);
    child.kill('SIGINT');
    await exited;
  }
  assert.ok(kids.length > 0, 'nx runs the watch in a process of its own');
  for (let i = 0; i < 50 && kids.some(alive); i++) await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(kids.filter(alive), [], 'no process of the watch (its forward worker included) outlives Ctrl-C');
  // The build of the same recipe: its stages run (Nx's cache never saw the watch), its states come from the
  // prompt-state cache, and its write keeps every file the watch wrote.
  const before = inodes(out);
  const r = await nx(ws, ['run', 'moe:build']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const after = inodes(out);
  for (const f of Object.keys(before).filter((f) => f.endsWith('.safetensors'))) assert.equal(after[f], before[f], `${f} kept`);
  // The watch runs no report stage; the build puts the report's page back.
  assert.ok(!('routing.html' in before) && 'routing.html' in after, JSON.stringify({ before: Object.keys(before), after: Object.keys(after) }));
});
