import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { run } from '../helpers/cli';
import { commitFor, startHubServer, type HubRepoSpec } from '../helpers/hub-server';
import { TINY } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';

const files = (n: 'a' | 'b') => Object.fromEntries(['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'].map((f) => [f, readFileSync(join(TINY(n), f))]));
const repos = (bMain?: string): HubRepoSpec[] => [
  { id: 'org/tiny-a', files: files('a') },
  { id: 'org/tiny-b', files: files('b'), ...(bMain ? { revisions: { main: bMain } } : {}) },
];

async function closedPort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

const ws = throwawayWorkspace('moe-forge-ws-hub-');
addRecipe(ws, 'h', `base_model: org/tiny-a
gate_mode: cheap_embed
experts:
  - source_model: org/tiny-a
    positive_prompts: ["How do I merge two models?"]
  - source_model: org/tiny-b
    positive_prompts: ["Write a python function"]
`);
const hubEnv = (url: string) => ({ HF_HUB_CACHE: join(ws, 'hub'), HF_ENDPOINT: url, MOE_FORGE_HTTP_RETRIES: '0' });
const fetchRan = async (env: Record<string, string>) => {
  const r = await nx(ws, ['run', 'h:fetch'], env);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  const line = r.stdout.split('\n').find((l) => l.includes('nx run h:fetch'))!;
  return /\[(local|remote) cache\]|existing outputs match the cache/.test(line) ? 'cache' : 'run';
};
const commitOf = (repo: string) => (JSON.parse(readFileSync(join(ws, 'dist', 'stages', 'h', 'fetch', 'models.json'), 'utf8')).models as { ref: string; revision: string }[]).find((m) => m.ref.startsWith(repo))!.revision;

test('a Hub model named by a branch keeps fetch cached until the branch moves; offline, the cached commit', async () => {
  const first = await startHubServer(repos());
  after(() => first.close());
  assert.equal(await fetchRan(hubEnv(first.url)), 'run');
  assert.equal(commitOf('org/tiny-b'), commitFor('org/tiny-b'));
  assert.equal(await fetchRan(hubEnv(first.url)), 'cache', 'the branch did not move: fetch is a cache hit');
  await first.close();

  // main of org/tiny-b moves to another commit: fetch runs and records it.
  const moved = commitFor('org/tiny-b', 'v2');
  const second = await startHubServer(repos(moved));
  after(() => second.close());
  assert.equal(await fetchRan(hubEnv(second.url)), 'run');
  assert.equal(commitOf('org/tiny-b'), moved);
  await second.close();

  // The hub down, or HF_HUB_OFFLINE: the commits the Hugging Face cache recorded, so fetch stays cached.
  const down = `http://127.0.0.1:${await closedPort()}`;
  assert.equal(await fetchRan(hubEnv(down)), 'cache');
  assert.equal(await fetchRan({ ...hubEnv(down), HF_HUB_OFFLINE: '1' }), 'cache');

  // A branch this machine never saw, the hub down: the runtime input's answer names the repo and the ref.
  addRecipe(ws, 'dev', 'base_model: org/tiny-a@dev\ngate_mode: random\nexperts:\n  - source_model: org/tiny-b\n');
  const ids = await run(process.execPath, ['build/runtime/model-ids.js', 'workspace-models/dev/moe.yml'], ws, hubEnv(down));
  assert.match(ids.stdout, /org\/tiny-a@dev.*cannot resolve org\/tiny-a@dev to a commit.*could not be reached/);
  const offline = await run(process.execPath, ['build/runtime/model-ids.js', 'workspace-models/dev/moe.yml'], ws, { ...hubEnv(down), HF_HUB_OFFLINE: '1' });
  assert.match(offline.stdout, /HF_HUB_OFFLINE is set and the Hugging Face cache has no commit for org\/tiny-a@dev/);
});
