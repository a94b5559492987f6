import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { earlyGuess } from '../../libs/cli/early-worker';
import { earlyWorkerPid, forkEarlyWorker } from '../../libs/fork';
import { computePromptStates, computePromptStatesIsolated, startForwardWorker, stopForwardWorker, waitingForwardWorker } from '../../libs/forward';
import { maxAbsDiff } from '../helpers/forward-reference';
import { alive, until } from '../helpers/processes';
import { ROOT, tempDir, TINY } from '../helpers/tmp';

// The forward worker forked by the command's first lines (bin/ -> build/early.js), before the merge's code loads.

const recipe = (base: string, mode?: string) => `${mode ? `gate_mode: ${mode}\n` : ''}base_model: ${base}
experts:
  - source_model: ${base}
    positive_prompts: ["math"]
  - source_model: ${base}
    positive_prompts: ["code"]
`;

test('the early guess forks for recipes that may need prompt states, and names the base only where it is a model folder on this machine (local, or a Hub id in the cache) and the pass runs on the CPU, with the arithmetic --forward-precision asks for', () => {
  const d = tempDir();
  const write = (name: string, text: string) => {
    writeFileSync(join(d, name), text);
    return join(d, name);
  };
  const hidden = write('hidden.yml', recipe(TINY('a')));
  assert.deepEqual(earlyGuess([hidden, 'out']), { base: TINY('a') });
  assert.deepEqual(earlyGuess([hidden, 'out', '-v', '--overwrite']), { base: TINY('a') });
  // Quoted, with a comment, relative to the working folder (as the merge resolves it).
  const rel = write('rel.yml', `gate_mode: "hidden_avg"  # mean over tokens\nbase_model: 'tiny-llama/tiny-a' # the base\nexperts: []\n`);
  assert.deepEqual(earlyGuess([rel, 'out'], join(ROOT, 'test', 'fixtures')), { base: TINY('a') });
  // A Hub id the Hugging Face cache holds: the snapshot its ref names, as fetch takes it offline; a revision the
  // cache has no ref for, or a snapshot without config.json, sets up nothing.
  const hub = join(d, 'hf');
  const sha = 'c'.repeat(40);
  const snap = join(hub, 'models--org--model', 'snapshots', sha);
  mkdirSync(snap, { recursive: true });
  mkdirSync(join(hub, 'models--org--model', 'refs'));
  writeFileSync(join(hub, 'models--org--model', 'refs', 'main'), sha);
  writeFileSync(join(snap, 'config.json'), readFileSync(join(TINY('a'), 'config.json')));
  const hubRecipe = write('hub.yml', recipe('org/model'));
  assert.deepEqual(earlyGuess([hubRecipe, 'out'], d, { HF_HUB_CACHE: hub }), { base: snap });
  assert.deepEqual(earlyGuess([hubRecipe, 'out'], d, { HF_HOME: d }), { base: null }, 'another cache: nothing there');
  assert.deepEqual(earlyGuess([write('rev.yml', recipe('org/model@v2')), 'out'], d, { HF_HUB_CACHE: hub }), { base: null });
  mkdirSync(join(hub, 'models--org--bare', 'snapshots', sha), { recursive: true });
  mkdirSync(join(hub, 'models--org--bare', 'refs'));
  writeFileSync(join(hub, 'models--org--bare', 'refs', 'main'), sha);
  assert.deepEqual(earlyGuess([write('bare-hub.yml', recipe('org/bare')), 'out'], d, { HF_HUB_CACHE: hub }), { base: null });
  // A worker, but nothing to set up yet: a folder without config.json, a flag that changes the pass,
  // the fitted routers' pass (it reads the experts' MLPs too).
  assert.deepEqual(earlyGuess([write('bare.yml', recipe(d)), 'out']), { base: null });
  assert.deepEqual(earlyGuess([hidden, 'out', '--device', 'cuda']), { base: null });
  // The arithmetic the stage will ask for goes with the base (its pass set up in bf16 or int8); a value the
  // command refuses, or the flag twice, sets up nothing (the command says what is wrong).
  assert.deepEqual(earlyGuess([hidden, 'out', '--forward-precision=int8']), { base: TINY('a'), precision: 'int8' });
  assert.deepEqual(earlyGuess([hidden, 'out', '--forward-precision', 'bf16']), { base: TINY('a'), precision: 'bf16' });
  assert.deepEqual(earlyGuess([hidden, 'out', '--forward-precision', 'fp32']), { base: TINY('a') });
  assert.deepEqual(earlyGuess([hidden, 'out', '--forward-precision=fp64']), { base: null });
  assert.deepEqual(earlyGuess([hidden, 'out', '--forward-precision=bf16', '--forward-precision=int8']), { base: null });
  assert.deepEqual(earlyGuess([hidden, 'out', '--forward-precision=bf16', '--device=cuda']), { base: null });
  assert.deepEqual(earlyGuess([write('fit.yml', recipe(TINY('a'), 'fit')), 'out']), { base: null });
  // No worker: modes without a forward pass, help, version, a missing recipe, too few arguments.
  for (const mode of ['cheap_embed', '"random"', "'uniform_random'"]) assert.equal(earlyGuess([write('m.yml', recipe(TINY('a'), mode)), 'out']), null, mode);
  assert.equal(earlyGuess([hidden, 'out', '--help']), null);
  assert.equal(earlyGuess(['--version']), null);
  assert.equal(earlyGuess([join(d, 'missing.yml'), 'out']), null);
  assert.equal(earlyGuess([hidden]), null);
  assert.equal(earlyGuess([d, 'out']), null, 'a folder is not a recipe');
});

const exited = (pid: number) => !alive(pid);

test('a worker forked early is the one the next pass takes (no second fork), with the same states; one nobody takes is ended', async () => {
  const ids = [[0, 17, 88, 301, 5, 9, 44]];
  const want = await computePromptStates(TINY('a'), ids);
  // The sources' worker: the path the forward library forks from sources.
  const worker = join(ROOT, 'libs', 'forward', 'worker-main.ts');
  try {
    forkEarlyWorker(worker);
    const early = earlyWorkerPid();
    assert.ok(early, 'an early worker waits');
    startForwardWorker();
    assert.equal(waitingForwardWorker(), early, 'adopted, not forked anew');
    assert.equal(earlyWorkerPid(), null);
    const got = await computePromptStatesIsolated(TINY('a'), ids);
    for (const [l, s] of want[0]!.entries()) assert.equal(maxAbsDiff(s.last, got[0]![l]!.last), 0, `layer ${l}`);
    await until('the worker that served the pass exits', () => exited(early));

    forkEarlyWorker(worker);
    const unused = earlyWorkerPid()!;
    stopForwardWorker();
    assert.equal(earlyWorkerPid(), null);
    await until('the unused early worker exits', () => exited(unused));
  } finally {
    stopForwardWorker(); // a failed assertion must not leave a worker holding the test open
  }
});

/** Pids of live processes whose environment carries `tag` (Linux /proc). */
function tagged(tag: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      if (readFileSync(`/proc/${e}/environ`, 'latin1').split('\0').includes(tag)) out.push(Number(e));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return out;
}

/** Runs the command, watching /proc for forward workers (processes of this run other than the command itself). */
async function runWatched(args: string[], cwd: string, env: Record<string, string>) {
  const tag = `MOE_FORGE_TEST_RUN=${randomUUID()}`;
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'mergekit-moe.js'), ...args], { cwd, env: { ...process.env, ...env, [tag.split('=')[0]!]: tag.split('=')[1]! }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (b) => (output += b));
  child.stderr!.on('data', (b) => (output += b));
  const seen = new Set<number>();
  let done = false;
  const code = new Promise<number | null>((r) => child.on('exit', (c) => { done = true; r(c); }));
  while (!done) {
    for (const pid of tagged(tag)) if (pid !== child.pid) seen.add(pid);
    await new Promise((r) => setTimeout(r, 5));
  }
  return { code: await code, output, workers: [...seen], tag };
}

test('the command forks its forward worker before the merge loads, uses that one for the pass, and leaves none behind when it stops before one', { skip: process.platform !== 'linux' && 'reads /proc' }, async () => {
  const d = tempDir();
  mkdirSync(join(d, 'tmp'));
  writeFileSync(join(d, 'moe.yml'), recipe(TINY('a')));
  const env = { MOE_FORGE_CACHE: join(d, 'cache'), TMPDIR: join(d, 'tmp') };
  // A flag the command refuses: it stops before any pass, after the early worker was forked.
  const refused = await runWatched(['moe.yml', 'out', '--no-such-flag'], d, env);
  assert.equal(refused.code, 1, refused.output);
  assert.match(refused.output, /unknown option --no-such-flag/);
  assert.equal(refused.workers.length, 1, `one early worker was forked: ${refused.output}`);
  await until('the early worker of a refused run exits', () => tagged(refused.tag).length === 0);
  // A merge that computes prompt states: one worker in all (the early one served the pass).
  const merged = await runWatched(['moe.yml', 'out', '--i-understand-this-is-not-useful-without-training'], d, env);
  assert.equal(merged.code, 0, merged.output);
  assert.equal(merged.workers.length, 1, `the early worker served the pass, no second fork: ${merged.output}`);
  await until('the worker exits with the command', () => tagged(merged.tag).length === 0);
  // Every state cached now, the recipe changed elsewhere (so the no-op memo misses): the early worker is ended unused.
  writeFileSync(join(d, 'moe.yml'), recipe(TINY('a')) + '# an edit\n');
  const cached = await runWatched(['moe.yml', 'out', '--i-understand-this-is-not-useful-without-training'], d, env);
  assert.equal(cached.code, 0, cached.output);
  await until('the unused early worker exits', () => tagged(cached.tag).length === 0);
});
