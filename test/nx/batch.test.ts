import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace, TINY_BF16_RECIPE } from '../helpers/workspace';

const STAGES = ['recipe', 'fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report', 'write'];

function workspace(prefix: string): string {
  const ws = throwawayWorkspace(prefix);
  cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
  addRecipe(ws, 'n', TINY_BF16_RECIPE);
  return ws;
}

/** Every file under dist/ (model folder and stage outputs), by workspace-relative path. */
function files(ws: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const walk = (d: string) => {
    for (const f of readdirSync(d)) {
      const p = join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(ws, p), readFileSync(p));
    }
  };
  walk(join(ws, 'dist'));
  return out;
}

/** Each task's log as Nx printed it (the lines under `> nx run n:<target>`), with the workspace's path taken out. */
function logs(ws: string, stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of stdout.replaceAll(ws, '<ws>').split(/^> nx run /m).slice(1)) {
    const [head, ...body] = part.split('\n');
    // `n:fetch  [local cache]` and `n:fetch` are the same task's log.
    out[head!.replace(/\s+\[.*\]\s*$/, '').trim()] = body.join('\n').split(/\n\s*\n\s*NX /)[0]!.trim();
  }
  return out;
}

test('batch mode runs the stages in one process with the same outputs, logs and cache entries as a normal build', async () => {
  const normalWs = workspace('moe-forge-ws-batch-a-');
  const batchWs = workspace('moe-forge-ws-batch-b-');
  const normal = await nx(normalWs, ['run', 'n:build']);
  assert.equal(normal.exitCode, 0, normal.stdout + normal.stderr);
  assert.doesNotMatch(normal.stdout, /Running \d+ tasks with/);
  const batch = await nx(batchWs, ['run', 'n:build'], { NX_BATCH_MODE: 'true' });
  assert.equal(batch.exitCode, 0, batch.stdout + batch.stderr);
  // One batch for the seven stages of the pipeline table (check-options runs on its own, before them).
  assert.match(batch.stdout, /Running 7 tasks with \.\/tools\/executors:stage/);

  const a = files(normalWs);
  const b = files(batchWs);
  assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
  for (const [f, bytes] of a) assert.ok(bytes.equals(b.get(f)!), `${f} is the same in both builds`);
  assert.ok(a.has('dist/models/n/config.json') && a.has('dist/stages/n/write/stats.json'));

  // What the batch stored is what a normal build looks up (and the reverse): no-op builds run no stage, and each
  // stage replays the log a normal build stored. (A normal build's live output interleaves its parallel tasks.)
  const fromCache = (stdout: string, what: string) => {
    for (const s of ['check-options', ...STAGES]) assert.match(stdout, new RegExp(`> nx run n:${s} +\\[(local cache|existing outputs match the cache, left as is)\\]`), `${s} from the cache (${what})`);
  };
  const replayNormal = await nx(normalWs, ['run', 'n:build']);
  fromCache(replayNormal.stdout, 'normal after normal');
  const replayBatch = await nx(batchWs, ['run', 'n:build']);
  fromCache(replayBatch.stdout, 'normal after batch');
  const batchAgain = await nx(batchWs, ['run', 'n:build'], { NX_BATCH_MODE: 'true' });
  fromCache(batchAgain.stdout, 'batch after batch');
  const la = logs(normalWs, replayNormal.stdout);
  const lb = logs(batchWs, replayBatch.stdout);
  const live = logs(batchWs, batch.stdout);
  for (const s of STAGES) {
    assert.equal(lb[`n:${s}`], la[`n:${s}`], `n:${s} stored the same log`);
    assert.equal(live[`n:${s}`], la[`n:${s}`], `n:${s} printed its own log in the batch`);
  }
  assert.match(la['n:assemble-experts']!, /tensors planned/);
  assert.match(la['n:write']!, /model folder dist\/models\/n: \d+ shards/);
});

test('in a batch, a stage that fails stops the stages after it, and the build fails with its message', async () => {
  const ws = workspace('moe-forge-ws-batch-fail-');
  addRecipe(ws, 'bad', TINY_BF16_RECIPE.replace('../../models/tiny-b', '../../models/no-such-model'));
  const r = await nx(ws, ['run', 'bad:build'], { NX_BATCH_MODE: 'true' });
  assert.notEqual(r.exitCode, 0);
  assert.match(r.stdout + r.stderr, /no-such-model/);
  assert.doesNotMatch(r.stdout, /> nx run bad:(embed-prompts|build-gates|assemble-experts|write)\n/);
  assert.doesNotMatch(r.stdout + r.stderr, /^\s+at /m, 'no stack trace');
});
