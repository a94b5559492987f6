import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mallocHugePages } from '../../libs/forward/huge-pages';
import { HUGE_MALLOC_TUNABLE, withHugeMalloc } from '../../libs/fork';
import { runIsolatedWorker } from '../../libs/forward';
import { tempDir } from '../helpers/tmp';

test('the forward worker\'s GLIBC_TUNABLES gains huge-page malloc, keeping the user\'s tunables and their own hugetlb choice', () => {
  assert.equal(withHugeMalloc(undefined), HUGE_MALLOC_TUNABLE);
  assert.equal(withHugeMalloc(''), HUGE_MALLOC_TUNABLE);
  assert.equal(withHugeMalloc('glibc.malloc.arena_max=2'), `glibc.malloc.arena_max=2:${HUGE_MALLOC_TUNABLE}`);
  assert.equal(withHugeMalloc('glibc.malloc.hugetlb=0'), 'glibc.malloc.hugetlb=0');
  assert.equal(withHugeMalloc('glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0'), 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0');
  // Without the tunable nothing is assumed of malloc, whatever the machine.
  assert.equal(mallocHugePages({}), false);
  assert.equal(mallocHugePages({ GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' }), false);
});

test('a forked forward worker starts with the huge-page tunable in its environment', async () => {
  const worker = join(tempDir('moe-forge-huge-'), 'env-worker.cjs');
  writeFileSync(worker, "process.once('message', () => process.send({ kind: 'result', result: process.env.GLIBC_TUNABLES ?? null }, () => process.exit(0)));\n");
  assert.equal(await runIsolatedWorker<string | null>(worker, {}), withHugeMalloc(process.env.GLIBC_TUNABLES));
});

test('a forked worker starts without NODE_EXTRA_CA_CERTS (it opens no connection; Node parses the file at every start) and keeps the rest of the environment', async () => {
  const worker = join(tempDir('moe-forge-env-'), 'env-worker.cjs');
  writeFileSync(worker, "process.once('message', () => process.send({ kind: 'result', result: [process.env.NODE_EXTRA_CA_CERTS ?? null, process.env.MOE_FORGE_ENV_PROBE ?? null] }, () => process.exit(0)));\n");
  const saved = { certs: process.env.NODE_EXTRA_CA_CERTS, probe: process.env.MOE_FORGE_ENV_PROBE };
  process.env.NODE_EXTRA_CA_CERTS = join(tempDir('moe-forge-certs-'), 'none.pem');
  process.env.MOE_FORGE_ENV_PROBE = 'kept';
  try {
    assert.deepEqual(await runIsolatedWorker<[string | null, string | null]>(worker, {}), [null, 'kept']);
  } finally {
    for (const [k, v] of [['NODE_EXTRA_CA_CERTS', saved.certs], ['MOE_FORGE_ENV_PROBE', saved.probe]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});

test('where mallocHugePages says so, a process started with the tunable gets huge pages for a plain Float32Array', (t) => {
  const env = { ...process.env, GLIBC_TUNABLES: withHugeMalloc(process.env.GLIBC_TUNABLES) };
  if (!mallocHugePages(env)) return t.skip('no transparent huge pages for malloc here (not Linux, glibc before 2.35, or THP off)');
  // 64 MiB touched page by page, then the process's anonymous huge-page total.
  const script = "const a = new Float32Array(16 << 20); for (let i = 0; i < a.length; i += 1024) a[i] = 1; " +
    "const m = /AnonHugePages:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/smaps_rollup', 'utf8')); console.log(m ? m[1] : 0);";
  const huge = Number(execFileSync(process.execPath, ['-e', script], { env, encoding: 'utf8' }).trim());
  const plain = Number(execFileSync(process.execPath, ['-e', script], { env: { ...env, GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' }, encoding: 'utf8' }).trim());
  assert.ok(huge >= 32 << 10, `AnonHugePages ${huge} kB with the tunable (at least half of 64 MiB expected)`);
  assert.ok(plain < huge, `AnonHugePages ${plain} kB without it, ${huge} kB with it`);
});
