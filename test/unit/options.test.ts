/** One options table (libs/options): Nx's schema, the command's flags and --help, and both front ends' parsing come from it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers/tmp';
import { cliFlags, cliStageOptions, helpText, nxSchemaText, OPTIONS, optionsForStage, parseStageOptions, stagesReading } from '../../libs/options';
import { parseArgs } from '../../libs/cli/args';
import { describeError } from '../../libs/errors';

test('the committed stage-options.json is the one the table makes (npm run options:schema writes it)', () => {
  const committed = readFileSync(join(ROOT, 'tools', 'executors', 'stage-options.json'), 'utf8');
  assert.equal(committed, nxSchemaText(), 'stage-options.json differs from libs/options/table.ts: run npm run options:schema');
});

test('every shared option the command spells is a flag in --help, with the same name Nx checks', () => {
  const flags = new Map(cliFlags().map((f) => [f.option, f]));
  const help = helpText();
  for (const [name, spec] of Object.entries(OPTIONS)) {
    if (!('cli' in spec)) continue;
    const f = flags.get(name);
    assert.ok(f, `${name} is a flag`);
    assert.equal(f.name, spec.cli.flag);
    assert.match(help, new RegExp(`--${spec.cli.flag}\\b`), `--help lists --${spec.cli.flag}`);
  }
  // Each flag spelled once.
  const names = cliFlags().map((f) => f.name);
  assert.deepEqual(names, [...new Set(names)]);
});

test('parsing: defaults filled in, values typed, the same one-line messages from the command line and from Nx', () => {
  const d = parseStageOptions({});
  assert.deepEqual(
    { seed: d.randomSeed, layout: d.layout, rng: d.rng, size: d.outShardSize, order: d.shardOrder, device: d.device, tok: d.copyTokenizer, over: d.overwrite },
    { seed: 0, layout: 'classic', rng: 'stream', size: 5_000_000_000, order: 'grouped', device: 'cpu', tok: true, over: false },
  );
  assert.equal(parseStageOptions({ outShardSize: '500m' }).outShardSize, 500_000_000);
  const cli = (argv: string[]) => cliStageOptions(parseArgs(argv, cliFlags()).values);
  assert.equal(cli(['--out-shard-size', '2k', '--random-seed', '7', '--no-copy-tokenizer']).outShardSize, 2000);
  assert.equal(cli(['--random-seed', '7']).randomSeed, 7);
  assert.equal(cli(['--no-copy-tokenizer']).copyTokenizer, false);
  const refused = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      return describeError(e);
    }
    assert.fail('accepted');
  };
  for (const [nx, argv, line] of [
    [{ layout: 'stacked' }, ['--layout', 'stacked'], 'field --layout: --layout must be classic or fused, got "stacked"'],
    [{ device: 'gpu' }, ['--device', 'gpu'], 'field --device: --device must be cpu, cuda, webgpu or auto, got "gpu"'],
    [{ randomSeed: 1e20 }, ['--random-seed', '1e20'], 'field --random-seed: must be an integer from 0 to 9007199254740991, got 100000000000000000000'],
  ] as const) {
    assert.equal(refused(() => parseStageOptions(nx)), line);
    assert.equal(refused(() => cli([...argv])), line);
  }
});

test('each option says which stages it changes: optionsForStage is what a stage must hash', () => {
  assert.deepEqual(optionsForStage('assemble-experts'), ['recipe', 'randomSeed', 'rng', 'layout', 'outShardSize', 'shardOrder']);
  assert.deepEqual(optionsForStage('fetch'), ['recipe']);
  assert.deepEqual(optionsForStage('embed-prompts'), ['recipe', 'device', 'forwardPrecision']);
  assert.deepEqual(optionsForStage('report'), ['recipe', 'randomSeed', 'rng', 'device', 'evalPrompts']);
  assert.deepEqual(optionsForStage('write'), ['recipe', 'outputPath', 'overwrite', 'copyTokenizer', 'gguf', 'ggufOnly', 'ggufSplitMaxSize']);
  // A location is read, never hashed.
  assert.ok(!optionsForStage('write').includes('stagesDir'));
  assert.deepEqual(stagesReading('stagesDir'), ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report', 'write']);
});

test('neither front end imports the other: both import the options table', () => {
  const files = (dir: string): string[] => readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? files(join(dir, n)) : n.endsWith('.ts') ? [join(dir, n)] : []));
  const imports = (f: string) => [...readFileSync(f, 'utf8').matchAll(/from '([^']+)'/g)].map((m) => m[1]!);
  for (const f of files(join(ROOT, 'tools', 'executors'))) assert.ok(!imports(f).some((i) => /libs\/cli(\/|$)/.test(i)), `${f} imports libs/cli`);
  for (const f of files(join(ROOT, 'libs', 'cli'))) assert.ok(!imports(f).some((i) => /tools\//.test(i)), `${f} imports tools/`);
  assert.ok(imports(join(ROOT, 'tools', 'executors', 'options.ts')).includes('../../libs/options'));
  assert.ok(imports(join(ROOT, 'libs', 'cli', 'mergekit-moe.ts')).includes('../options'));
});
