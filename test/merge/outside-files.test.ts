import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergekitMoe, run } from '../helpers/cli';
import { startHubServer } from '../helpers/hub-server';
import { FIXTURES, ROOT, TINY, tempDir } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';

// A build writes nothing outside its output, its caches and its own work folders: a hidden-gate merge (the forward
// pass runs onnxruntime in a forked worker) leaves TMPDIR, HOME and XDG_CACHE_HOME as empty as it found them.

/** Every path under a folder, relative to it. */
function everything(d: string): string[] {
  const out: string[] = [];
  const walk = (p: string, rel: string) => {
    for (const e of readdirSync(p).sort()) {
      out.push(join(rel, e));
      if (statSync(join(p, e)).isDirectory()) walk(join(p, e), join(rel, e));
    }
  };
  walk(d, '');
  return out;
}

/** Fresh TMPDIR, HOME and XDG_CACHE_HOME; the documented caches are set elsewhere. CI unset: onnxruntime's telemetry is off under CI. */
function strangerEnv(d: string) {
  const env = { TMPDIR: join(d, 'tmp'), HOME: join(d, 'home'), XDG_CACHE_HOME: join(d, 'xdg'), CI: undefined, MOE_FORGE_CACHE: join(d, 'cache'), HF_HUB_CACHE: join(d, 'hub') };
  for (const k of ['TMPDIR', 'HOME', 'XDG_CACHE_HOME'] as const) mkdirSync(env[k]);
  return env;
}

function assertUntouched(env: ReturnType<typeof strangerEnv>, output: string) {
  for (const k of ['TMPDIR', 'HOME', 'XDG_CACHE_HOME'] as const) assert.deepEqual(everything(env[k]), [], `${k} is as it was\n${output}`);
}

const hiddenRecipe = (models: string) => readFileSync(join(FIXTURES, 'parity', 'mixtral-hidden.yml'), 'utf8').replace(/\.\.\/tiny-llama/g, models);

test('mergekit-moe with a hidden gate mode writes nothing into TMPDIR, HOME or XDG_CACHE_HOME', async () => {
  const d = tempDir();
  const env = strangerEnv(d);
  writeFileSync(join(d, 'moe.yml'), hiddenRecipe(join(FIXTURES, 'tiny-llama')));
  const r = await mergekitMoe(['moe.yml', 'out'], d, env);
  assert.equal(r.exitCode, 0, r.stderr);
  assertUntouched(env, r.stderr);
});

test('mergekit-moe downloading its models from a hub writes nothing outside HF_HUB_CACHE either', async () => {
  const files = (n: 'a' | 'b') => Object.fromEntries(readdirSync(TINY(n)).map((f) => [f, readFileSync(join(TINY(n), f))]));
  const server = await startHubServer([{ id: 'org/a', files: files('a') }, { id: 'org/b', files: files('b') }]);
  try {
    const d = tempDir();
    const env = { ...strangerEnv(d), HF_ENDPOINT: server.url, HF_TOKEN: '', HF_HUB_OFFLINE: '' };
    writeFileSync(join(d, 'moe.yml'), 'base_model: org/a\ngate_mode: hidden\nexperts:\n  - source_model: org/a\n    positive_prompts: ["math"]\n  - source_model: org/b\n    positive_prompts: ["code"]\n');
    const r = await mergekitMoe(['moe.yml', 'out'], d, env);
    assert.equal(r.exitCode, 0, r.stderr);
    assertUntouched(env, r.stderr);
  } finally {
    await server.close();
  }
});

test('mergekit-moe as installed (build/ and bin/, no sources) writes nothing into TMPDIR, nor into its own folder', async () => {
  const d = tempDir();
  const app = join(d, 'app');
  for (const f of ['bin', 'build']) cpSync(join(ROOT, f), join(app, f), { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(app, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(app, 'node_modules'), 'dir');
  // (node_modules is the checkout's, linked: not walked.)
  const mine = () => [readdirSync(app), everything(join(app, 'bin')), everything(join(app, 'build'))];
  const before = mine();
  const env = strangerEnv(d);
  writeFileSync(join(d, 'moe.yml'), hiddenRecipe(join(FIXTURES, 'tiny-llama')));
  const r = await run(process.execPath, [join(app, 'bin', 'mergekit-moe.js'), 'moe.yml', 'out'], d, env);
  assert.equal(r.exitCode, 0, r.stderr);
  assertUntouched(env, r.stderr);
  assert.deepEqual(mine(), before, 'nothing built or cached beside the command');
});

test('an Nx build of a hidden-gate recipe writes nothing into TMPDIR, HOME or XDG_CACHE_HOME', async () => {
  const ws = throwawayWorkspace();
  cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
  addRecipe(ws, 'hidden', hiddenRecipe('../../models'));
  const env = strangerEnv(tempDir());
  const r = await nx(ws, ['run', 'hidden:build'], env);
  assert.equal(r.exitCode, 0, r.stdout + r.stderr);
  assertUntouched(env, r.stdout + r.stderr);
});
