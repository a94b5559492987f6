import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, tempDir, TINY } from '../helpers/tmp';
import { addRecipe, throwawayWorkspace } from '../helpers/workspace';
import { alive, descendants } from '../helpers/processes';

// Nothing may be left behind when a run is stopped by SIGINT or SIGTERM: not its work folders in TMPDIR,
// not a half-written output beside the output path, not a forward-pass process; model folders unchanged.

const recipe = (models: string) => `base_model: ${models}/a
gate_mode: hidden
experts:
  - source_model: ${models}/a
    positive_prompts: ["math"]
  - source_model: ${models}/b
    positive_prompts: ["code"]
`;

/** Every file under a folder with size and mtime: a model folder left as it was. */
function listing(d: string): string[] {
  const out: string[] = [];
  const walk = (p: string) => {
    for (const e of readdirSync(p).sort()) {
      const f = join(p, e);
      const st = statSync(f);
      if (st.isDirectory()) walk(f);
      else out.push(`${f} ${st.size} ${st.mtimeMs}`);
    }
  };
  walk(d);
  return out;
}


/** Starts a command with its own TMPDIR, sends `signal` once `ready` matches its output, waits for it to end. */
async function interrupt(cmd: string[], cwd: string, env: Record<string, string>, ready: RegExp, signal: NodeJS.Signals) {
  const child = spawn(process.execPath, cmd, { cwd, env: { ...process.env, FORCE_COLOR: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let kids: number[] = [];
  const sent = new Promise<void>((resolve) => {
    const onData = (b: Buffer) => {
      output += b.toString();
      if (ready.test(output) && !child.killed) {
        kids = existsProc() ? descendants(child.pid!) : [];
        child.kill(signal);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
  });
  const code = await new Promise<number | null>((r) => child.on('exit', (c, s) => r(c ?? (s ? -1 : null))));
  await Promise.race([sent, new Promise((r) => setTimeout(r, 10))]);
  // Give orphaned children a moment to notice their parent is gone.
  for (let i = 0; i < 50 && kids.some(alive); i++) await new Promise((r) => setTimeout(r, 100));
  return { code, output, kids };
}

const existsProc = () => {
  try {
    return statSync('/proc/self').isDirectory();
  } catch {
    return false;
  }
};

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  test(`${signal} of mergekit-moe during the forward pass leaves nothing behind`, async () => {
    const d = tempDir();
    const models = join(d, 'models');
    mkdirSync(models);
    for (const n of ['a', 'b'] as const) cpSync(TINY(n), join(models, n), { recursive: true });
    const before = listing(models);
    const tmp = join(d, 'tmp');
    mkdirSync(tmp);
    const { writeFileSync } = await import('node:fs');
    writeFileSync(join(d, 'moe.yml'), recipe('models'));
    // The last line before the forward pass starts (its own lines come only when it is done, ~100 ms before exit).
    const r = await interrupt([join(ROOT, 'bin', 'mergekit-moe.js'), 'moe.yml', 'out', '-v'], d, { TMPDIR: tmp, MOE_FORGE_CACHE: join(d, 'cache') }, /model \S*b: local/, signal);
    assert.equal(r.code, signal === 'SIGINT' ? 130 : 143, r.output);
    // Not our work folder, nor tsx's cache or onnxruntime's telemetry files (test/merge/outside-files.test.ts).
    assert.deepEqual(readdirSync(tmp), [], 'nothing left in TMPDIR');
    // The cache may or may not exist yet (models copied a moment ago are racy: their content ids are not memoised).
    assert.deepEqual(readdirSync(d).filter((e) => e !== 'cache').sort(), ['models', 'moe.yml', 'tmp'], 'no output or temporary output folder');
    assert.deepEqual(listing(models), before, 'model folders unchanged');
    assert.deepEqual(r.kids.filter(alive), [], 'no forward-pass process survives');
    assert.doesNotMatch(r.output, /EPIPE|at .*\.ts:\d+/, 'no stack trace');
  });
}

test('SIGTERM of an Nx build leaves no temporary folder and no output', async () => {
  const ws = throwawayWorkspace();
  cpSync(join(ROOT, 'test', 'fixtures', 'tiny-llama'), join(ws, 'models'), { recursive: true });
  addRecipe(ws, 'moe', recipe('../../models').replaceAll('/a\n', '/tiny-a\n').replaceAll('/b\n', '/tiny-b\n'));
  const before = listing(join(ws, 'models'));
  const tmp = join(ws, 'tmp');
  mkdirSync(tmp);
  const nxBin = join(ws, 'node_modules', 'nx', 'dist', 'bin', 'nx.js');
  const r = await interrupt([nxBin, 'run', 'moe:build', '--verbose'], ws, { TMPDIR: tmp, NX_DAEMON: 'false', NX_NO_CLOUD: 'true', CI: 'true', NX_TUI: 'false', MOE_FORGE_CACHE: join(ws, '.moe-cache'), NX_SOCKET_DIR: join(ws, '.nx-sockets') }, /embed-prompts/, 'SIGTERM');
  assert.notEqual(r.code, 0, r.output);
  // Nx's own files under TMPDIR are Nx's; ours start with moe-forge.
  assert.deepEqual(readdirSync(tmp).filter((e) => e.startsWith('moe-forge')), [], 'no work folder of ours left in TMPDIR');
  const dist = join(ws, 'dist', 'models');
  assert.deepEqual(readdirSync(join(ws, 'dist')).includes('models') ? readdirSync(dist) : [], [], 'no output or temporary output folder');
  assert.deepEqual(listing(join(ws, 'models')), before, 'model folders unchanged');
  for (let i = 0; i < 50 && r.kids.some(alive); i++) await new Promise((res) => setTimeout(res, 100));
  assert.deepEqual(r.kids.filter(alive), [], 'no process of the build survives');
});

test('SIGTERM in the middle of writing the output leaves no half-written folder beside it', async () => {
  const d = tempDir();
  const out = join(d, 'out');
  // A plan of 256 MB of zeros: long enough to be stopped while its shard is being written.
  const script = `
    const { runWrite } = require(${JSON.stringify(join(ROOT, 'libs', 'stages', 'write'))});
    const { newGates } = require(${JSON.stringify(join(ROOT, 'libs', 'gates'))});
    const n = 64 << 20;
    const plan = { version: 1, architecture: 'Mixtral', layout: 'classic', outDtype: null, config: {}, models: [], maxShardBytes: 0, warnings: [],
      tensors: Array.from({ length: 4 }, (_, i) => ({ name: 't' + i, dtype: 'F32', shape: [n / 4], parts: [{ kind: 'zeros', elements: n / 4 }] })) };
    runWrite(plan, { outPath: ${JSON.stringify(out)}, gates: newGates(1, 1, 1), recipeText: '', tokenizerDir: '', copyTokenizer: false, overwrite: false, writeRecipe: false,
      log: (l) => console.log(l), progress: { update: (done) => { if (done > (8 << 20)) console.log('progress'); }, end() {} } });`;
  const r = await interrupt(['--import', 'tsx', '-e', script], ROOT, {}, /progress/, 'SIGTERM');
  assert.equal(r.code, 143, r.output);
  assert.deepEqual(readdirSync(d), [], 'neither the output nor its temporary sibling');
});

test('a forward-pass worker whose parent dies exits quietly, without an EPIPE stack', async () => {
  const worker = join(ROOT, 'libs', 'forward', 'worker-main.ts');
  const script = `
    const { fork } = require('node:child_process');
    const { pathToFileURL } = require('node:url');
    const child = fork(${JSON.stringify(worker)}, [], { execArgv: ['--import', pathToFileURL(require.resolve('tsx')).href], serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    console.log('worker ' + child.pid);
    child.send({ kind: 'prompts', modelDir: ${JSON.stringify(TINY('a'))}, prompts: [[1, 2, 3, 4]], options: {} });
    setTimeout(() => process.exit(0), 30);`;
  const parent = spawn(process.execPath, ['-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  parent.stdout!.on('data', (b) => (out += b));
  parent.stderr!.on('data', (b) => (out += b));
  // The pipes close when the worker, which shares them, is gone too.
  await new Promise<void>((r) => parent.stdout!.on('close', () => r()));
  const pid = Number(/worker (\d+)/.exec(out)?.[1]);
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(!alive(pid), 'the worker is gone');
  assert.doesNotMatch(out, /EPIPE|ERR_IPC|Error|\n\s+at /, out);
});
