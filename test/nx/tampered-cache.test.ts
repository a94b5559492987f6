import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace, TINY_BF16_RECIPE } from '../helpers/workspace';
import type { MergePlan, SourcePart } from '../../libs/plan/types';

// A stage's outputs restored from the Nx cache (local, or a remote one someone else can write) are inputs to
// check, not to trust: here the cache's own copy of plan.json is edited, as a writer of the cache could.

const walk = (p: string): string[] => (statSync(p).isDirectory() ? readdirSync(p).flatMap((f) => walk(join(p, f))) : [p]);

test('a plan.json altered in the Nx cache to read a file of the build machine is refused, naming the tensor; nothing is written', async () => {
  const ws = throwawayWorkspace('moe-forge-ws-tamper-');
  cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
  addRecipe(ws, 't', TINY_BF16_RECIPE);
  const first = await nx(ws, ['run', 't:build']);
  assert.equal(first.exitCode, 0, first.stdout + first.stderr);
  const cached = walk(join(ws, '.nx', 'cache')).filter((f) => f.endsWith('plan.json'));
  assert.equal(cached.length, 1, `one cached plan.json: ${cached.join(', ')}`);
  const plan = JSON.parse(readFileSync(cached[0]!, 'utf8')) as MergePlan;
  const t = plan.tensors.find((x) => x.parts[0]!.kind === 'source' && x.name.includes('.experts.'))!;
  (t.parts[0] as SourcePart).file = '/etc/passwd';
  writeFileSync(cached[0]!, JSON.stringify(plan));
  // The stage folders and the model gone: Nx restores every stage from its cache and the write stage runs.
  rmSync(join(ws, 'dist'), { recursive: true });
  const r = await nx(ws, ['run', 't:build']);
  assert.notEqual(r.exitCode, 0, r.stdout);
  assert.match(r.stdout + r.stderr, /nx run t:assemble-experts.*\[local cache\]/);
  const line = (r.stdout + r.stderr).split('\n').find((l) => l.includes('error:'));
  assert.ok(line, r.stdout + r.stderr);
  assert.match(line, new RegExp(`plan\\.json, tensor ${t.name.replace(/\./g, '\\.')}: reads /etc/passwd, which is not a file of the resolved models; plan\\.json is refused \\(a cache entry may have been altered`));
  assert.ok(!existsSync(join(ws, 'dist', 'models', 't')), 'no model folder');
});
