/**
 * The incremental bench's parts that decide what runs: which mergekit-moe is the reference (a Python entry point,
 * never ours), the disk check before a size starts (bytes needed and free in one line), and the growth table
 * made from the per-size result files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SIZES, checkDisk, findReference, growthTable, sizeBytes } from '../../bench/incremental';
import { ROOT, tempDir } from '../helpers/tmp';

const d = tempDir('moe-forge-bench-inc-');

function entry(dir: string, first: string): string {
  mkdirSync(dir, { recursive: true });
  const f = join(dir, 'mergekit-moe');
  writeFileSync(f, `${first}\nimport sys\n`);
  chmodSync(f, 0o755);
  return f;
}

test('the reference is the first Python mergekit-moe on PATH, ours (a node script) is passed over, none found says so in one line', () => {
  const ours = join(d, 'ours');
  entry(ours, '#!/usr/bin/env node');
  const py = entry(join(d, 'venv', 'bin'), '#!/work/tools/venv/bin/python3.11');
  assert.deepEqual(findReference({ PATH: [ours, join(d, 'venv', 'bin')].join(':') }).ref, { command: py, foundBy: 'PATH' });
  const none = findReference({ PATH: ours });
  assert.equal(none.ref, null);
  assert.match(none.why, /^reference: no Python mergekit-moe found \(set MOE_FORGE_MERGEKIT=[^\n]*$/);
});

test('MOE_FORGE_MERGEKIT names the reference, and must be a Python entry point', () => {
  const py = entry(join(d, 'other'), '#!/usr/bin/python3');
  assert.deepEqual(findReference({ MOE_FORGE_MERGEKIT: py, PATH: '' }).ref, { command: py, foundBy: 'MOE_FORGE_MERGEKIT' });
  const ours = join(d, 'ours', 'mergekit-moe');
  assert.throws(() => findReference({ MOE_FORGE_MERGEKIT: ours }), /^Error: MOE_FORGE_MERGEKIT=.*ours\/mergekit-moe: expected the path of a Python mergekit-moe entry point/);
  assert.throws(() => findReference({ MOE_FORGE_MERGEKIT: join(d, 'missing') }), /MOE_FORGE_MERGEKIT=.*missing: expected/);
});

test('sizes: the large shape is Mistral-7B\'s (a 14.5 GB input, a 26 GB output with 2 experts); its disk check names bytes needed and free', () => {
  const large = sizeBytes(SIZES.large!, 2);
  assert.ok(Math.abs(large.input / 1e9 - 14.48) < 0.05, `Mistral-7B in bf16: ${large.input}`);
  assert.ok(Math.abs(large.output / 1e9 - 25.9) < 0.2, `2-expert Mixtral of it: ${large.output}`);
  // TinyLlama's 4-expert Mixtral: the medium output the issue names (6.77 GB).
  assert.ok(Math.abs(sizeBytes(SIZES.medium!, 4).output / 1e9 - 6.77) < 0.05);
  // Far more than any test machine's disk holds: the check refuses with both figures.
  const huge = { ...SIZES.large!, layers: 32000 };
  SIZES.huge = huge;
  try {
    assert.throws(() => checkDisk(d, 'huge', 2, true), /^Error: incremental --size huge needs [\d.]+ GB free in .* and [\d.]+ GB are: inputs 2 × [\d.]+ GB, our output [\d.]+ GB, the reference's output [\d.]+ GB or the copy floor's 8\.0 GB, 1 GB spare; free space there or set TMPDIR to a bigger disk$/);
  } finally {
    delete SIZES.huge;
  }
  const small = checkDisk(d, 'small', 4, false);
  assert.ok(small.free >= small.needed);
});

test('the growth table: one column a size from the per-size files, smallest output first, each figure with its factor over the size before', () => {
  const out = join(d, 'out');
  mkdirSync(out, { recursive: true });
  const result = (gb: number, cold: number, ref: number | null) => ({
    steps: [cold, 1, 2, 3, 0.5].map((seconds, i) => ({ step: String(i), seconds, peakRssKiB: 1024 * 100 * gb, bytesWritten: 0, outputBytes: gb * 1e9 })),
    forward: { gemmBaselineSeconds: cold / 2 },
    copy: { bytes: 1e9, seconds: 1 },
    reference: ref === null ? null : { command: 'x', foundBy: 'PATH', cold: { seconds: ref, peakRssKiB: 1 << 20 }, plus: { seconds: ref, peakRssKiB: 1 << 20 } },
  });
  assert.equal(growthTable(out), null, 'no files: no table');
  writeFileSync(join(out, 'incremental-medium.json'), JSON.stringify({ date: '2026-12-05T00:00:00Z', result: result(6.77, 20, 40) }));
  assert.equal(growthTable(out), null, 'one size: no table');
  writeFileSync(join(out, 'incremental-small.json'), JSON.stringify({ date: '2026-12-04T00:00:00Z', result: result(0.5, 4, null) }));
  const t = growthTable(out)!;
  const lines = t.split('\n');
  assert.match(lines[1]!, /^figure\s+\| small \(2026-12-04\)\s+\| medium \(2026-12-05\)$/);
  assert.match(t, /cold build, s\s+\| 4\.00\s+\| 20\.0 \(×5\.0\)/);
  assert.match(t, /reference cold, s\s+\| —\s+\| 40\.0/);
  assert.match(t, /cold: ours \/ reference\s+\| —\s+\| 0\.50/);
});

test("--tokenizer: a generated model takes a real tokenizer's files where its ids fit the embedding table, else one line says why", async () => {
  const { REAL_TOKENIZERS, useRealTokenizer } = await import('../../bench/models');
  const { loadTokenizer } = await import('../../libs/tokenizer');
  const m = join(d, 'real-tok');
  mkdirSync(m, { recursive: true });
  writeFileSync(join(m, 'config.json'), JSON.stringify({ model_type: 'llama', vocab_size: 32000 }));
  useRealTokenizer(m, 'llama2', SIZES.medium!.vocab, ROOT);
  const tok = await loadTokenizer(m);
  // Llama 2's ids (its <s> is 1, and "Hello" is one token there, five in the byte tokenizer).
  assert.equal(tok.padTokenId, 1);
  assert.equal(tok.encodePrompt('Hello').length, 2);
  assert.equal(REAL_TOKENIZERS.llama2!.vocab, 32000);
  assert.throws(() => useRealTokenizer(m, 'llama2', SIZES.small!.vocab, ROOT), /^Error: --tokenizer llama2: its 32000 token ids do not fit the model's 4000-row embedding table \(use --size medium or large\)$/);
  assert.throws(() => useRealTokenizer(m, 'gpt9', 32000, ROOT), /^Error: --tokenizer must be one of llama2, llama3, got "gpt9"$/);
});

test('--tokenizer llama3: the models take its 128256-row vocabulary (llama2 and the byte tokenizer keep the size\'s)', async () => {
  const { specWithTokenizer } = await import('../../bench/models');
  assert.equal(specWithTokenizer(SIZES.medium!, 'llama3').vocab, 128256);
  assert.equal(specWithTokenizer(SIZES.medium!, 'llama3').hidden, SIZES.medium!.hidden);
  assert.equal(specWithTokenizer(SIZES.medium!, 'llama2').vocab, 32000);
  assert.equal(specWithTokenizer(SIZES.small!, null).vocab, 4000);
  assert.throws(() => specWithTokenizer(SIZES.small!, 'gpt9'), /^Error: --tokenizer must be one of llama2, llama3, got "gpt9"$/);
});
