/**
 * Every path a run writes is checked against every input and the output folder before any work; the stamp's
 * names stay inside the folder; one folder has one owning recipe and one writer at a time; scales cannot write inf.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergekitMoe } from '../helpers/cli';
import { tempDir, TINY } from '../helpers/tmp';
import { firstNonFinite, encodeFloats } from '../../libs/safetensors/dtype';
import { floatKernels, useFloatWasm } from '../../libs/safetensors/float-wasm';

const dir = tempDir('moe-forge-written-paths-');
const recipe = (extra = '') => `base_model: ${TINY('a')}
gate_mode: cheap_embed
experts:
  - source_model: ${TINY('b')}
    positive_prompts: ["Write a python function"]${extra}
  - source_model: ${TINY('c')}
    positive_prompts: ["Once upon a time"]
`;
const cache = join(dir, 'cache');
const cli = (args: string[], env: Record<string, string> = {}) => mergekitMoe(args, dir, { MOE_FORGE_CACHE: cache, ...env });
const oneLine = (r: { stderr: string }) => assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);

test('--report never lands on an input, inside the output, a model or the cache, nor on a file we did not write', async () => {
  // A recipe named moe.json (YAML reads JSON) and a report of the same name.
  writeFileSync(join(dir, 'moe.json'), JSON.stringify({ base_model: TINY('a'), gate_mode: 'cheap_embed', experts: [{ source_model: TINY('b'), positive_prompts: ['a'] }, { source_model: TINY('c'), positive_prompts: ['b'] }] }));
  const recipeBefore = readFileSync(join(dir, 'moe.json'), 'utf8');
  writeFileSync(join(dir, 'moe.yml'), recipe());
  writeFileSync(join(dir, 'held.json'), '{"expert": 0, "prompt": "A test"}\n');
  symlinkSync(join(dir, 'moe.yml'), join(dir, 'link.json'));
  writeFileSync(join(dir, 'notes.html'), '<p>my notes</p>');
  writeFileSync(join(dir, 'mine.json'), '{"mine": true}');
  const cases: [string[], RegExp][] = [
    [['moe.json', 'out', '--report', 'moe.json'], /moe\.json is the recipe/],
    // The report's .json sibling is the recipe, the held-out prompts, or reached through a link.
    [['moe.json', 'out', '--report', 'moe.html'], /moe\.json is the recipe/],
    [['moe.yml', 'out', '--report', 'held.html', '--eval-prompts', 'held.json'], /held\.json is the eval prompts/],
    [['moe.yml', 'out', '--report', 'link.json'], /link\.json is the recipe/],
    // Inside the output folder: OUT/config.html would make OUT/config.json a report.
    [['moe.yml', 'out', '--report', 'out/config.html'], /out\/config\.html lies inside the output folder/],
    [['moe.yml', 'out', '--report', join(TINY('b'), 'routing.html')], /lies inside the model folder of/],
    [['moe.yml', 'out', '--report', join(cache, 'r.html')], /lies inside the prompt-state cache/],
    // Files of the user's: the named one, or the sibling written beside it.
    [['moe.yml', 'out', '--report', 'notes.html'], /notes\.html exists and is not a routing report moe-forge wrote; move it away or pass --overwrite/],
    [['moe.yml', 'out', '--report', 'mine.html'], /mine\.json exists and is not a routing report moe-forge wrote/],
  ];
  for (const [args, want] of cases) {
    const r = await cli(args);
    assert.equal(r.exitCode, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, want);
    oneLine(r);
  }
  assert.equal(readFileSync(join(dir, 'moe.json'), 'utf8'), recipeBefore);
  assert.equal(readFileSync(join(dir, 'notes.html'), 'utf8'), '<p>my notes</p>');
  assert.equal(readFileSync(join(dir, 'mine.json'), 'utf8'), '{"mine": true}');
  assert.ok(!existsSync(join(dir, 'out')), 'nothing written before the checks');

  // A report we wrote is replaced without --overwrite; a user's file with it.
  let r = await cli(['moe.yml', 'out', '--report', 'ours.html']);
  assert.equal(r.exitCode, 0, r.stderr);
  r = await cli(['moe.yml', 'out', '--report', 'ours.html']);
  assert.equal(r.exitCode, 0, r.stderr);
  r = await cli(['moe.yml', 'out', '--report', 'notes.html', '--overwrite']);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(readFileSync(join(dir, 'notes.html'), 'utf8'), /<title>Routing report: /);
});

test('the output folder never is, nor holds, the cache; the cache never lies inside the output or a model folder', async () => {
  writeFileSync(join(dir, 'c.yml'), recipe());
  for (const [out, env, want] of [
    [join(dir, 'cache-out'), join(dir, 'cache-out'), /output path is the prompt-state cache/],
    [join(dir, 'holder'), join(dir, 'holder', 'cache'), /output path contains the prompt-state cache/],
  ] as const) {
    const r = await cli(['c.yml', out], { MOE_FORGE_CACHE: env });
    assert.equal(r.exitCode, 1, r.stderr);
    assert.match(r.stderr, want);
  }
});

test("a stamp naming a file outside its folder is refused, and the outside file is untouched", async () => {
  writeFileSync(join(dir, 's.yml'), recipe());
  const out = join(dir, 'stamped');
  let r = await cli(['s.yml', out]);
  assert.equal(r.exitCode, 0, r.stderr);
  writeFileSync(join(dir, 'victim.txt'), 'keep me');
  for (const field of ['files', 'shards'] as const) {
    const stampFile = join(out, '.moe-forge.json');
    const stamp = JSON.parse(readFileSync(stampFile, 'utf8'));
    const good = JSON.stringify(stamp);
    stamp[field]['../victim.txt'] = field === 'files' ? 7 : 'x';
    stamp.hash = 'changed';
    writeFileSync(stampFile, JSON.stringify(stamp));
    r = await cli(['s.yml', out]);
    assert.equal(r.exitCode, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`\\.moe-forge\\.json, field ${field}: "\\.\\./victim\\.txt" is not a plain file name inside the folder`));
    oneLine(r);
    assert.equal(readFileSync(join(dir, 'victim.txt'), 'utf8'), 'keep me');
    writeFileSync(stampFile, good);
  }
});

test('--overwrite hands a folder over even when nothing in it changes: a copy of the owning recipe owns it afterwards', async () => {
  // The same text under another name: the model is the same, so the merge writes nothing but the stamp.
  writeFileSync(join(dir, 'first.yml'), recipe());
  writeFileSync(join(dir, 'second.yml'), recipe());
  const out = join(dir, 'handed-out');
  let r = await cli(['first.yml', out]);
  assert.equal(r.exitCode, 0, r.stderr);
  r = await cli(['second.yml', out]);
  assert.equal(r.exitCode, 1);
  assert.match(r.stderr, /was written by recipe .*first\.yml, and recipe .*second\.yml would replace it/);
  r = await cli(['second.yml', out, '--overwrite']);
  assert.equal(r.exitCode, 0, r.stderr);
  assert.match(r.stdout, /^unchanged /);
  assert.equal(JSON.parse(readFileSync(join(out, '.moe-forge.json'), 'utf8')).recipe, '../second.yml');
  r = await cli(['second.yml', out]);
  assert.equal(r.exitCode, 0, r.stderr);
  r = await cli(['first.yml', out]);
  assert.equal(r.exitCode, 1);
  assert.match(r.stderr, /was written by recipe .*second\.yml, and recipe .*first\.yml would replace it/);
});

test('two recipes with one output folder: the second is refused naming both; --overwrite hands it over; concurrent runs take turns', async () => {
  writeFileSync(join(dir, 'a.yml'), recipe());
  writeFileSync(join(dir, 'b.yml'), recipe('\n    noise_scale: 0.01'));
  const out = join(dir, 'shared-out');
  let r = await cli(['a.yml', out]);
  assert.equal(r.exitCode, 0, r.stderr);
  r = await cli(['b.yml', out]);
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /shared-out was written by recipe .*a\.yml, and recipe .*b\.yml would replace it .*give each recipe its own output folder, or pass --overwrite/);
  oneLine(r);
  r = await cli(['b.yml', out, '--overwrite']);
  assert.equal(r.exitCode, 0, r.stderr);
  r = await cli(['a.yml', out]);
  assert.equal(r.exitCode, 1);
  assert.match(r.stderr, /was written by recipe .*b\.yml, and recipe .*a\.yml/);
  // A recipe that moved away leaves the folder to its successor.
  writeFileSync(join(dir, 'c2.yml'), recipe());
  r = await cli(['c2.yml', join(dir, 'moved-out')]);
  assert.equal(r.exitCode, 0, r.stderr);
  const { renameSync } = await import('node:fs');
  renameSync(join(dir, 'c2.yml'), join(dir, 'c3.yml'));
  r = await cli(['c3.yml', join(dir, 'moved-out')]);
  assert.equal(r.exitCode, 0, r.stderr);

  // Two recipes at once into a new folder: one wins, the other is refused after waiting its turn (never both).
  const race = join(dir, 'race-out');
  const both = await Promise.all([cli(['a.yml', race]), cli(['b.yml', race])]);
  assert.deepEqual(both.map((x) => x.exitCode).sort(), [0, 1], both.map((x) => x.stderr).join('\n'));
  assert.match(both.find((x) => x.exitCode === 1)!.stderr, /was written by recipe/);
  // The same recipe twice at once: both succeed, one after the other, and the folder is whole.
  const same = join(dir, 'same-out');
  const twice = await Promise.all([cli(['a.yml', same]), cli(['a.yml', same])]);
  assert.deepEqual(twice.map((x) => x.exitCode), [0, 0], twice.map((x) => x.stderr).join('\n'));
  assert.ok(existsSync(join(same, 'model.safetensors.index.json')) || existsSync(join(same, 'model.safetensors')));
  assert.deepEqual(readdirSync(dir).filter((e) => e.includes('.lock')), [], 'no lock left behind');
});

test('scales that overflow are refused before any work with their place; noise that overflows float16 is caught in the written chunk', async () => {
  writeFileSync(join(dir, 'big.yml'), `${recipe('\n    residual_scale: 1e39')}dtype: bfloat16\n`);
  let r = await cli(['big.yml', join(dir, 'big-out')]);
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /big\.yml:6:\d+, field experts\[0\]\.residual_scale: 1e\+39 is beyond the largest value of the output dtype bfloat16 \(3\.3895e\+38\): every weight it touches would be written as inf/);
  oneLine(r);
  writeFileSync(join(dir, 'big16.yml'), `${recipe('\n    noise_scale: 70000')}dtype: float16\n`);
  r = await cli(['big16.yml', join(dir, 'big-out')]);
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /field experts\[0\]\.noise_scale: 70000 is beyond the largest value of the output dtype float16/);
  // Under the limit, but noise of that scale still overflows float16 in many weights: the chunk check stops it.
  writeFileSync(join(dir, 'noisy16.yml'), `${recipe('\n    noise_scale: 60000')}dtype: float16\n`);
  r = await cli(['noisy16.yml', join(dir, 'big-out')]);
  assert.equal(r.exitCode, 1, r.stderr);
  assert.match(r.stderr, /tensor model\.layers\.\d+\.block_sparse_moe\.experts\.0\.w\d\.weight: values beyond F16's range \(inf or NaN\) after noise_scale 60000/);
  oneLine(r);
  assert.ok(!existsSync(join(dir, 'big-out')), 'no model with inf weights was written');
});

test('firstNonFinite finds inf and NaN in every float dtype, at any position and alignment', () => {
  assert.ok(floatKernels(), 'the SIMD kernels are there');
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    // Past 4 kB the SIMD kernel looks first, FLOAT_CAP (65536) values at a time.
    for (const n of [1, 2, 3, 7, 64, 65, 2047, 2048, 2053, 65536, 70_001, 131_075]) {
      for (const bad of [Infinity, -Infinity, NaN]) {
        for (let at = 0; at < n; at += Math.max(1, Math.floor(n / 5))) {
          const values = Array.from({ length: n }, (_, i) => (i === at ? bad : (i % 7) - 3.5));
          const bytes = encodeFloats(values, dtype);
          assert.equal(firstNonFinite(bytes, dtype), at, `${dtype} n=${n} ${bad} at ${at}`);
          // Unaligned: the same values one byte into a buffer.
          const shifted = Buffer.alloc(bytes.length + 1);
          bytes.copy(shifted, 1);
          assert.equal(firstNonFinite(shifted.subarray(1), dtype), at, `${dtype} unaligned n=${n} at ${at}`);
        }
      }
      assert.equal(firstNonFinite(encodeFloats(Array.from({ length: n }, (_, i) => (i % 60) * 1000 - 3), dtype), dtype), -1);
    }
  }
  // A chunk with inf in its last value, then a shorter finite one: what lies past its end is not looked at.
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    assert.equal(firstNonFinite(encodeFloats(Array.from({ length: 65_536 }, (_, i) => (i === 65_535 ? Infinity : 1)), dtype), dtype), 65_535);
    assert.equal(firstNonFinite(encodeFloats(Array.from({ length: 65_531 }, () => 1), dtype), dtype), -1, `${dtype}: nothing past the values`);
    assert.equal(firstNonFinite(encodeFloats(Array.from({ length: 65_536 + 65_531 }, () => 1), dtype), dtype), -1, `${dtype}: nor in a second chunk`);
    useFloatWasm(false);
    try {
      assert.equal(firstNonFinite(encodeFloats(Array.from({ length: 9000 }, (_, i) => (i === 8999 ? NaN : 1)), dtype), dtype), 8999, 'without the kernels');
    } finally {
      useFloatWasm(true);
    }
  }
  // The largest finite float16 is finite; the next is not.
  assert.equal(firstNonFinite(encodeFloats([65504, -65504], 'F16'), 'F16'), -1);
  assert.equal(firstNonFinite(encodeFloats([1, 65520], 'F16'), 'F16'), 1);
});
