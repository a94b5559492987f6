/**
 * A new option needs its row in the options table and its use in a stage's options builder, nothing more: the
 * pipeline's options type is the table's, and both front ends (the command and library through commandEnv, Nx
 * through nxStageEnv) hand a stage every row by its name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tempDir, FIXTURES } from '../helpers/tmp';
import { apiNames, OPTIONS, parseStageOptions, stageOptionsFromApi, type ApiOptions, type OptionName, type OptionSpec, type StageOptions } from '../../libs/options';
import { commandEnv, type MergeOptions, type PipelineOptions } from '../../libs/pipeline';
import { readRecipe } from '../../libs/recipe';
import { nxStageEnv } from '../../tools/executors/run-stage';
import { stagePaths } from '../../tools/executors/options';
import type { ExecutorContext } from '@nx/devkit';

// Type-level: every row of the table is a key of the pipeline's options, with the table's type (tsc fails otherwise).
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const everyRow: Same<{ [K in OptionName]: PipelineOptions[K] }, StageOptions> = true;
// The library's options hold the table's, by the library's names.
const apiInMerge: Same<Pick<MergeOptions, keyof ApiOptions>, ApiOptions> = true;

const names = Object.keys(OPTIONS) as OptionName[];

/** A value for the option other than its default, made from its row. */
function otherValue(name: string, spec: OptionSpec): unknown {
  switch (spec.type) {
    case 'string':
      return `given-${name}`;
    case 'boolean':
      return !spec.default;
    case 'enum':
      return spec.values.find((v) => v !== spec.default)!;
    case 'seed':
      return 7;
    case 'size':
      return 123_456;
    case 'count':
      return 3;
  }
}

test('the type checks above hold', () => {
  assert.equal(everyRow && apiInMerge, true);
});

test('the library maps each of its option names onto the table once, and leaves defaults to the table', () => {
  const api = apiNames();
  assert.equal(api.randomSeed, 'seed');
  assert.equal(api.outShardSize, 'maxShardBytes');
  for (const off of ['recipe', 'outputPath', 'stagesDir', 'evalPrompts'] as const) assert.equal(api[off], undefined, off);
  const given: Record<string, unknown> = {};
  for (const n of names) if (api[n]) given[api[n]] = otherValue(n, OPTIONS[n]);
  const mapped = stageOptionsFromApi(given as ApiOptions);
  for (const n of names) assert.deepEqual(mapped[n], api[n] ? given[api[n]] : undefined, n);
  // Nothing given: the table's defaults, as the Nx executors parse no options.
  assert.deepEqual(stageOptionsFromApi({}), parseStageOptions({}));
});

test('commandEnv and the Nx env hand a stage every option of the table by its name', async () => {
  const dir = tempDir();
  const values = Object.fromEntries(names.map((n) => [n, otherValue(n, OPTIONS[n])])) as StageOptions;
  const recipeFile = join(FIXTURES, 'parity', 'mixtral-hidden.yml');
  const command = commandEnv({ recipeFile, outPath: join(dir, 'out'), modelBaseDir: dir }, values, await readRecipe(recipeFile), join(dir, 'work'), join(dir, 'cache'), null);
  for (const n of names) assert.deepEqual(command.options[n], values[n], `commandEnv: ${n}`);
  assert.equal(command.paths.maxShardBytes, values.outShardSize);

  // Nx: the options as the executor parses them (the recipe left to its default, the file Nx hashes; evalPrompts
  // resolved against the project's folder).
  const raw = { ...values, recipe: undefined, evalPrompts: 'held-out.yml' };
  const context = { root: dir, projectName: 'p', projectsConfigurations: { version: 2, projects: { p: { root: 'p' } } } } as unknown as ExecutorContext;
  const { options, paths } = stagePaths(raw, context);
  const nx = nxStageEnv(options, paths, context);
  for (const n of names) {
    const want = n === 'evalPrompts' ? join(dir, 'p', 'held-out.yml') : raw[n];
    assert.deepEqual(nx.options[n], want, `nxStageEnv: ${n}`);
  }
});
