/**
 * Each stage's command-line options are stated once, in the options table (libs/options): the pipeline table reads
 * them from there, and the recipe stage hands each stage exactly those through its slice.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../helpers/tmp';
import { OPTIONS, OPTION_STAGES, sliceOptions, stagesReading } from '../../libs/options';
import { PIPELINE, sliceFile, stageEntry, type StageEnv } from '../../libs/pipeline';

test("the pipeline table's options of a stage are the options table's rows that name it", () => {
  assert.deepEqual(stageEntry('fetch').options, ['outputPath', 'overwrite', 'recompute', 'allowIdenticalModels', 'cacheDir', 'evalPrompts']);
  assert.deepEqual(stageEntry('assemble-experts').options, ['randomSeed', 'rng', 'layout', 'outShardSize', 'shardOrder', 'device', 'allowIdenticalModels', 'cacheDir']);
  assert.deepEqual(stageEntry('write').options, ['outputPath', 'overwrite', 'recompute', 'copyTokenizer', 'gguf', 'ggufOnly', 'ggufSplitMaxSize', 'cacheDir', 'evalPrompts']);
  // The recipe stage takes every option given; the others take theirs through their slice.
  assert.deepEqual(stageEntry('recipe').options, []);
  for (const s of OPTION_STAGES) assert.deepEqual(stageEntry(s).options, sliceOptions(s));
  // What locates the slice (the recipe, the stages folder) is never handed on through it.
  for (const s of PIPELINE) assert.ok(!s.options.includes('recipe') && !s.options.includes('stagesDir'), s.name);
  // An option reaches every stage that reads it, and only those.
  for (const name of Object.keys(OPTIONS) as (keyof typeof OPTIONS)[]) {
    if (name === 'recipe' || name === 'stagesDir') continue;
    assert.deepEqual(PIPELINE.filter((s) => s.options.includes(name)).map((s) => s.name), stagesReading(name), name);
  }
});

test('the recipe stage writes each stage the options given that the options table says it reads', async () => {
  const dir = tempDir();
  try {
    const recipe = join(dir, 'moe.yml');
    // Two experts of one model: every stage that opens the merge context checks this again.
    writeFileSync(recipe, 'base_model: ./base\ngate_mode: random\nexperts:\n  - source_model: ./m\n  - source_model: ./m\n');
    const overrides = { allowIdenticalModels: true, outShardSize: 1000, evalPrompts: 'held-out.yml' };
    const env = {
      name: 'x',
      options: { allowIdenticalModels: true },
      paths: { recipe, stage: (s: string) => join(dir, 'stages', s) },
      overrides,
    } as unknown as StageEnv;
    await stageEntry('recipe').run(env);
    const slice = (s: string) => JSON.parse(readFileSync(join(dir, 'stages', 'recipe', sliceFile(s as never)), 'utf8')).options;
    assert.deepEqual(slice('fetch'), { allowIdenticalModels: true, evalPrompts: 'held-out.yml' });
    assert.deepEqual(slice('embed-prompts'), { allowIdenticalModels: true });
    assert.deepEqual(slice('build-gates'), { allowIdenticalModels: true });
    assert.deepEqual(slice('assemble-experts'), { allowIdenticalModels: true, outShardSize: 1000 });
    assert.deepEqual(slice('report'), { allowIdenticalModels: true, evalPrompts: 'held-out.yml' });
    assert.deepEqual(slice('write'), { evalPrompts: 'held-out.yml' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
