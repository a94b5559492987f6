/**
 * What a build prints is true of the run the user looks at: no warning per expert for random gates, a gone folder
 * said once; a cache hit replays results only (never progress, timings, why it ran or --verbose lines of the run
 * that filled the cache); each line names the task that printed it, in every output style.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';

const STAGES = ['check-options', 'recipe', 'fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report', 'write'];

/** Each task's part of Nx's output (the lines under `> nx run r:<target>`), by target; Nx's closing summary left out. */
function sections(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  // eslint-disable-next-line no-control-regex
  const plain = stdout.replace(/\x1b\[[0-9;]*m/g, '');
  for (const part of plain.split(/^> nx run /m).slice(1)) {
    const [head, ...body] = part.split('\n');
    // `r:write`, `r:write  [local cache]` and `r:write --random-seed=5` are the same task.
    out[head!.trim().split(/\s+/)[0]!] = body.join('\n').split(/\n\s*NX /)[0]!.trim();
  }
  return out;
}

/** What is true of one run only: timings, rates, progress, --verbose lines, why write ran. */
const RUN_ONLY = /debug:|\(\d+\.\d s\)|[kMG]?B\/s|changed since written|is missing: writing it again|output unchanged/;

const ws = throwawayWorkspace('moe-forge-ws-honest-');
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
addRecipe(ws, 'r', `base_model: ../../models/tiny-a
gate_mode: random
experts:
  - source_model: ../../models/tiny-a
  - source_model: ../../models/tiny-b
  - source_model: ../../models/tiny-c
  - source_model: ../../models/tiny-b
    noise_scale: 0.01
experts_per_token: 1
`);

test('random gates: one line that experts starve by design, no warning per expert; a deleted output folder is said once', async () => {
  const r = await nx(ws, ['run', 'r:build']);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const all = r.stdout + r.stderr;
  assert.doesNotMatch(all, /WARNING: .* starves in/);
  assert.match(all, /\d of 4 experts win no prompt in some layer, as expected of random gates \(the router needs training\)/);
  rmSync(join(ws, 'dist', 'models', 'r'), { recursive: true });
  const again = await nx(ws, ['run', 'r:build']);
  assert.equal(again.exitCode, 0, again.stdout + again.stderr);
  assert.match(again.stdout, /model folder dist\/models\/r is missing: writing it again/);
  assert.doesNotMatch(again.stdout, /changed since written/);
});

test('--skip-nx-cache reruns the stages but keeps what is unchanged; with --recompute nothing is reused', async () => {
  const out = join(ws, 'dist', 'models', 'r');
  const inodes = () => new Map(readdirSync(out).filter((f) => f.endsWith('.safetensors')).map((f) => [f, statSync(join(out, f)).ino]));
  assert.equal((await nx(ws, ['run', 'r:build'])).exitCode, 0);
  const before = inodes();
  const skip = await nx(ws, ['run', 'r:build', '--skip-nx-cache']);
  assert.equal(skip.exitCode, 0, skip.stdout + skip.stderr);
  assert.deepEqual(inodes(), before, 'the model folder is kept as it is');
  const all = await nx(ws, ['run', 'r:build', '--skip-nx-cache', '--recompute']);
  assert.equal(all.exitCode, 0, all.stdout + all.stderr);
  for (const [f, ino] of inodes()) assert.notEqual(ino, before.get(f), `${f} written again`);
});

test('a cache hit replays results only: what is true of one run (timings, why write ran, --verbose lines) is said by that run\'s build target, never replayed', async () => {
  const out = join(ws, 'dist', 'models', 'r');
  // A new seed: the stages it changes run, verbosely.
  const v = await nx(ws, ['run', 'r:build', '--random-seed=5', '--verbose']);
  assert.equal(v.exitCode, 0, v.stdout + v.stderr);
  const first = sections(v.stdout);
  assert.match(first['r:build']!, /^ran: .*assemble-experts.*write/m);
  assert.match(first['r:build']!, /^\[write\] writing: .* \(\d+\.\d s\)$/m, 'the write\'s time, in the build\'s notes');
  assert.match(first['r:build']!, /^\[assemble-experts\] debug: architecture Mixtral/m);
  for (const t of STAGES) assert.doesNotMatch(first[`r:${t}`] ?? '', RUN_ONLY, `r:${t} keeps what is true of this run only out of its (cached) output`);
  assert.match(first['r:write']!, /^\[write\] model folder dist\/models\/r: \d+ shards?$/m);

  // The folder deleted: write runs again and the build says why.
  rmSync(out, { recursive: true });
  const again = await nx(ws, ['run', 'r:build', '--random-seed=5']);
  assert.equal(again.exitCode, 0, again.stdout + again.stderr);
  const second = sections(again.stdout);
  assert.match(second['r:build']!, /^ran: write; restored from Nx's cache: /m);
  assert.match(second['r:build']!, /^\[write\] model folder dist\/models\/r is missing: writing it again$/m);
  assert.doesNotMatch(second['r:build']!, /debug:/, 'a plain build says no --verbose lines');

  // A no-op: every stage from the cache (entries the two runs above stored), and nothing of those runs.
  const noop = await nx(ws, ['run', 'r:build', '--random-seed=5']);
  assert.equal(noop.exitCode, 0, noop.stdout + noop.stderr);
  // eslint-disable-next-line no-control-regex
  const plain = noop.stdout.replace(/\x1b\[[0-9;]*m/g, '');
  for (const t of STAGES) assert.match(plain, new RegExp(`> nx run r:${t}( --\\S+)* +\\[(local cache|existing outputs match the cache, left as is)\\]`), t);
  assert.doesNotMatch(noop.stdout, RUN_ONLY);
  const third = sections(noop.stdout);
  assert.match(third['r:build']!, /^nothing ran: .* restored from Nx's cache$/m);
  assert.match(third['r:write']!, /^\[write\] model folder dist\/models\/r: \d+ shards?$/m, 'the result is replayed');
  assert.match(third['r:assemble-experts']!, /^\[assemble-experts\] .*tensors planned$/m);
});

test('each line names the task that printed it, in every output style: stream (parallel tasks interleave), static and batch', async () => {
  const tags = (text: string) => [...text.matchAll(/^(?:r:\s+)?\[([\w-]+)\] /gm)].map((m) => m[1]);
  const styles: { style: string; args: string[]; env: Record<string, string> }[] = [
    { style: 'stream', args: ['--output-style=stream'], env: {} },
    { style: 'static', args: ['--output-style=static'], env: {} },
    { style: 'batch', args: [], env: { NX_BATCH_MODE: 'true' } },
  ];
  for (const { style, args, env } of styles) {
    const r = await nx(ws, ['run', 'r:build', '--skip-nx-cache', ...args], env);
    assert.equal(r.exitCode, 0, `${style}: ${r.stdout}${r.stderr}`);
    // eslint-disable-next-line no-control-regex
    const text = r.stdout.replace(/\x1b\[[0-9;]*m/g, '');
    // The stages' results, each tagged with the stage that printed it, wherever Nx put the line.
    assert.match(text, /\[assemble-experts\] .*tensors planned/, style);
    assert.match(text, /\[report\] merged model/, style);
    assert.match(text, /\[write\] model folder dist\/models\/r:/, style);
    for (const line of text.split('\n')) {
      if (/tensors planned|merged model|model folder dist|gates:|prompt states|experts win no prompt/.test(line)) assert.ok(/\[[\w-]+\] /.test(line), `${style}: untagged stage line ${JSON.stringify(line)}`);
    }
    assert.ok(tags(text).every((t) => STAGES.includes(t!) || t === 'build'), `${style}: tags name stages: ${tags(text).join(', ')}`);
    if (style !== 'stream') {
      // Static and batch print each task's output whole under its header: every tagged line is its own.
      for (const [head, body] of Object.entries(sections(r.stdout))) {
        const target = head.replace(/^r:/, '');
        // The build target's notes name the stage each is about.
        if (target === 'build') continue;
        for (const t of tags(body)) assert.equal(t, target, `${style}: a line of ${t} under ${head}`);
      }
    }
  }
});
