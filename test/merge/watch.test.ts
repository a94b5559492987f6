import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, tempDir, TINY } from '../helpers/tmp';
import { alive, descendants } from '../helpers/processes';

const recipe = (prompts: string[], mode = 'hidden') => `base_model: models/a
gate_mode: ${mode}
experts:
  - source_model: models/a
    positive_prompts: ${JSON.stringify(prompts)}
  - source_model: models/b
    positive_prompts: ["code"]
`;

/** Processes under `pid` running the forward worker (Linux /proc). */
function forwardWorkers(pid: number): number[] {
  return descendants(pid).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('forward-worker');
    } catch {
      return false; // gone meanwhile
    }
  });
}

test('mergekit-moe --watch rebuilds on each save, says a bad recipe and goes on, keeps a forward worker ready between builds, and ends clean on Ctrl-C', { skip: process.platform !== 'linux' && 'reads /proc' }, async () => {
  const d = tempDir();
  mkdirSync(join(d, 'models'));
  for (const n of ['a', 'b'] as const) cpSync(TINY(n), join(d, 'models', n), { recursive: true });
  const tmp = join(d, 'tmp');
  mkdirSync(tmp);
  writeFileSync(join(d, 'moe.yml'), recipe(['math']));
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'mergekit-moe.js'), 'moe.yml', 'out', '--watch'], {
    cwd: d,
    env: { ...process.env, FORCE_COLOR: '0', TMPDIR: tmp, MOE_FORGE_CACHE: join(d, 'cache') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '', err = '';
  child.stdout!.on('data', (b) => (out += b));
  child.stderr!.on('data', (b) => (err += b));
  const exited = new Promise<number | null>((r) => child.on('exit', (c, s) => r(c ?? (s ? -1 : null))));
  const lines = (re: RegExp, s: string) => s.split('\n').filter((l) => re.test(l)).length;
  const wait = async (what: string, cond: () => boolean) => {
    for (let i = 0; i < 1200 && !cond() && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 25));
    assert.ok(cond(), `${what}\nstdout:\n${out}\nstderr:\n${err}`);
  };
  const config = () => readFileSync(join(d, 'out', 'mergekit_moe_config.yml'), 'utf8');
  try {
    await wait('the first build', () => lines(/^wrote .*out \(\d+ shards?\) in \d+\.\d\d s$/, out) === 1 && /watching moe\.yml for changes/.test(err));
    assert.match(config(), /math/);
    await wait('a forward worker waits, set up for the next build', () => forwardWorkers(child.pid!).length === 1);
    const ready = forwardWorkers(child.pid!)[0]!;

    // A new prompt, saved as editors do (a new file renamed over the recipe).
    writeFileSync(join(d, '.moe.yml.new'), recipe(['math', 'algebra']));
    renameSync(join(d, '.moe.yml.new'), join(d, 'moe.yml'));
    await wait('a build after the save', () => lines(/^wrote /, out) === 2);
    assert.match(config(), /algebra/);
    // The waiting worker did the pass (it exits once its result is sent); another waits for the next edit.
    await wait('the waiting worker was used, and a new one waits', () => !alive(ready) && forwardWorkers(child.pid!).length === 1);

    // A bad recipe: said in one line, the output kept, the watch goes on.
    writeFileSync(join(d, 'moe.yml'), recipe(['math']).replace('gate_mode: hidden', 'gate_mode: hiden'));
    await wait('the error', () => /^error: .*gate_mode/m.test(err));
    assert.equal(child.exitCode, null, 'still watching');
    assert.match(config(), /algebra/, 'the last good output stays');
    writeFileSync(join(d, 'moe.yml'), recipe(['math', 'geometry']));
    await wait('a build after the fix', () => lines(/^wrote /, out) === 3);
    assert.match(config(), /geometry/);
    await wait('a forward worker waits again', () => forwardWorkers(child.pid!).length === 1);
    const last = forwardWorkers(child.pid!);

    child.kill('SIGINT');
    assert.equal(await exited, 130, err);
    for (let i = 0; i < 50 && last.some(alive); i++) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(last.filter(alive), [], 'the waiting worker ends with the command');
    assert.deepEqual(readdirSync(tmp).filter((e) => e.startsWith('moe-forge')), [], 'no work folder left');
    assert.doesNotMatch(err, /\n\s+at |EPIPE/, 'no stack trace');
  } finally {
    child.kill('SIGKILL');
  }
});

test('mergekit-moe --watch run again watches again (no answer from the no-op memo); without prompt states it keeps no forward worker', { skip: process.platform !== 'linux' && 'reads /proc' }, async () => {
  const d = tempDir();
  mkdirSync(join(d, 'models'));
  for (const n of ['a', 'b'] as const) cpSync(TINY(n), join(d, 'models', n), { recursive: true });
  writeFileSync(join(d, 'moe.yml'), recipe(['math'], 'cheap_embed'));
  for (let round = 0; round < 2; round++) {
    const child = spawn(process.execPath, [join(ROOT, 'bin', 'mergekit-moe.js'), 'moe.yml', 'out', '--watch'], { cwd: d, env: { ...process.env, MOE_FORGE_CACHE: join(d, 'cache') }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout!.on('data', (b) => (out += b));
    child.stderr!.on('data', (b) => (err += b));
    const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    try {
      for (let i = 0; i < 1200 && !/watching/.test(err) && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 25));
      assert.match(err, /watching moe\.yml/, `round ${round}: ${out}${err}`);
      assert.match(out, round === 0 ? /^wrote / : /^unchanged .* in \d+\.\d\d s$/m);
      await new Promise((r) => setTimeout(r, 500));
      assert.deepEqual(forwardWorkers(child.pid!), []);
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited, 143);
  }
});

test('main with --watch and a stop signal (in-process callers): builds on each save, then returns 0 once stopped, its waiting forward worker ended', async () => {
  const { main } = await import('../../libs/cli/mergekit-moe');
  const { waitingForwardWorker } = await import('../../libs/forward');
  const d = tempDir();
  mkdirSync(join(d, 'models'));
  for (const n of ['a', 'b'] as const) cpSync(TINY(n), join(d, 'models', n), { recursive: true });
  const file = join(d, 'moe.yml');
  writeFileSync(file, recipe(['math']).replaceAll('models/', `${join(d, 'models')}/`));
  const out: string[] = [], err: string[] = [];
  const stop = new AbortController();
  const done = main([file, join(d, 'out'), '--watch'], { out: (l) => out.push(l), err: (l) => err.push(l) }, stop.signal);
  const wait = async (what: string, cond: () => boolean) => {
    for (let i = 0; i < 1200 && !cond(); i++) await new Promise((r) => setTimeout(r, 25));
    assert.ok(cond(), `${what}\n${out.join('\n')}\n${err.join('\n')}`);
  };
  await wait('the first build, then a worker set up for the next', () => out.length === 1 && waitingForwardWorker() !== null);
  writeFileSync(file, recipe(['math', 'algebra']).replaceAll('models/', `${join(d, 'models')}/`));
  await wait('a build after the save', () => out.length === 2 && waitingForwardWorker() !== null);
  const worker = waitingForwardWorker()!;
  stop.abort();
  assert.equal(await done, 0);
  assert.equal(waitingForwardWorker(), null);
  for (let i = 0; i < 50 && alive(worker); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(!alive(worker), 'the waiting worker ended with the watch');
  assert.match(out.join('\n'), /^wrote .* in \d+\.\d\d s\nwrote .* in \d+\.\d\d s$/);
});

test('between builds the forward worker is set up for a base complete in the Hugging Face cache, as for a local folder; not for one the cache lacks', async () => {
  const { prepareStats, stopForwardWorker } = await import('../../libs/forward');
  const { prepareNextMerge } = await import('../../libs/pipeline/watch');
  const d = tempDir();
  const hub = join(d, 'hub');
  const sha = 'b'.repeat(40);
  const repo = join(hub, 'models--org--tiny');
  mkdirSync(join(repo, 'refs'), { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), sha);
  const snap = join(repo, 'snapshots', sha);
  cpSync(TINY('a'), snap, { recursive: true });
  const file = join(d, 'moe.yml');
  const was = process.env.HF_HUB_CACHE;
  process.env.HF_HUB_CACHE = hub; // the command's environment names the cache
  try {
    writeFileSync(file, recipe(['hello']).replace('base_model: models/a', 'base_model: org/tiny'));
    const sent = prepareStats.sent;
    await prepareNextMerge(file, d, { device: 'cpu', forwardPrecision: 'fp32' });
    assert.equal(prepareStats.sent, sent + 1);
    assert.equal(prepareStats.lastModel, snap, 'the snapshot fetch will take');
    assert.equal(prepareStats.lastPrecision, 'fp32');
    // A watch of bf16 builds sets up the bf16 pass (the one its builds ask for), not the exact one.
    await prepareNextMerge(file, d, { device: 'cpu', forwardPrecision: 'bf16' });
    assert.deepEqual([prepareStats.sent, prepareStats.lastPrecision], [sent + 2, 'bf16']);
    await prepareNextMerge(file, d, { device: 'cuda', forwardPrecision: 'bf16' });
    assert.equal(prepareStats.sent, sent + 2, 'off the CPU: the stage sets up its own pass');
    writeFileSync(file, recipe(['hello']).replace('base_model: models/a', 'base_model: org/absent'));
    await prepareNextMerge(file, d, { device: 'cpu', forwardPrecision: 'fp32' });
    assert.equal(prepareStats.sent, sent + 2, 'a base the cache lacks: nothing to set up ahead');
  } finally {
    if (was === undefined) delete process.env.HF_HUB_CACHE;
    else process.env.HF_HUB_CACHE = was;
    stopForwardWorker();
  }
});
