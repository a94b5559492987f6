import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mergekitMoe, run } from '../helpers/cli';
import { FIXTURES, ROOT } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';
import { nxSchema } from '../../libs/options';
import { STAGES } from '../../tools/executors';

const ws = throwawayWorkspace();
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
const recipe = (expert: string) => `base_model: ../../models/tiny-a
gate_mode: cheap_embed
dtype: float32
experts:
  - source_model: ../../models/tiny-a
    positive_prompts: ["How do I merge two models with mergekit?"]
  - source_model: ../../models/${expert}
    positive_prompts: ["Write a python function that adds numbers"]
`;
addRecipe(ws, 'uses-b', recipe('tiny-b'));
addRecipe(ws, 'uses-c', recipe('tiny-c'));
const git = (args: string[]) => run('git', ['-c', 'user.email=t@t', '-c', 'user.name=t', ...args], ws);

test('stage-options.json is the options table\'s schema; the schema is strict', () => {
  const schema = JSON.parse(readFileSync(join(ROOT, 'tools', 'executors', 'stage-options.json'), 'utf8'));
  assert.equal(schema.additionalProperties, false);
  assert.deepEqual(nxSchema(), schema);
  for (const [k, p] of Object.entries<{ description?: string }>(schema.properties)) assert.ok(p.description, `${k} has a description`);
  const executors = JSON.parse(readFileSync(join(ROOT, 'tools', 'executors', 'executors.json'), 'utf8')).executors;
  for (const s of STAGES) assert.equal(executors[s].schema, './stage-options.json');
  const gen = JSON.parse(readFileSync(join(ROOT, 'tools', 'executors', 'recipe', 'schema.json'), 'utf8'));
  for (const [k, p] of Object.entries<{ description?: string }>(gen.properties)) assert.ok(p.description, `generator option ${k} has a description`);
  for (const k of ['name', 'base', 'experts', 'gateMode']) assert.ok(gen.properties[k]['x-prompt'], `generator option ${k} prompts`);
});

test('an unknown or out-of-range option fails with Nx\'s schema message before any stage runs', async () => {
  for (const [arg, message] of [
    ['--random-sed=1', /'random-sed' is not found in schema/],
    ['--random-seed=-1', /Property 'randomSeed' does not match the schema\. -1 should be at least 0/],
    ['--layout=stacked', /'stacked' should be one of classic,fused/],
  ] as const) {
    const r = await nx(ws, ['run', 'uses-b:build', arg]);
    const out = r.stdout + r.stderr;
    assert.notEqual(r.exitCode, 0, arg);
    assert.match(out, message);
    assert.doesNotMatch(out, /\n\s+at .+:\d+:\d+/, `no stack trace for ${arg}`);
    assert.doesNotMatch(out, /nx run uses-b:fetch/, `no stage ran for ${arg}`);
    assert.ok(!existsSync(join(ws, 'dist', 'stages', 'uses-b', 'fetch')));
  }
});

test('an option Nx\'s schema lets through but no stage can use (a seed or shard size beyond 2^53) gets the CLI\'s one-line message before any stage runs', async () => {
  const recipeFile = join(ws, 'workspace-models', 'uses-b', 'moe.yml');
  for (const [flag, value] of [['--random-seed', '1e20'], ['--out-shard-size', '99999999999999999999'], ['--random-seed', '9007199254740993']] as const) {
    const cli = await mergekitMoe([recipeFile, join(ws, 'cli-out'), flag, value], ws);
    assert.equal(cli.exitCode, 1, cli.stderr);
    const line = cli.stderr.trim();
    assert.match(line, new RegExp(`^error: field ${flag}: must be .* from 0 to 9007199254740991.*, got \\d+$`));
    const r = await nx(ws, ['run', 'uses-b:build', `${flag}=${value}`]);
    const out = r.stdout + r.stderr;
    assert.notEqual(r.exitCode, 0, `${flag}=${value}`);
    assert.ok(out.includes(line), `Nx says what the CLI says (${line}):\n${out}`);
    assert.doesNotMatch(out, /internal error|\n\s+at .+:\d+:\d+/);
    assert.doesNotMatch(out, /nx run uses-b:fetch/, `no stage ran for ${flag}=${value}`);
  }
});

test('every stage target carries technologies and help; models in the workspace are projects the recipes depend on', async () => {
  const r = await nx(ws, ['show', 'project', 'uses-b', '--json']);
  assert.equal(r.exitCode, 0, r.stderr);
  const p = JSON.parse(r.stdout);
  for (const t of [...STAGES, 'build']) {
    assert.deepEqual(p.targets[t].metadata.technologies, ['moe-forge'], t);
    assert.match(p.targets[t].metadata.help.command, /nx run uses-b:\S+ --help/, t);
  }
  assert.deepEqual(p.targets['embed-prompts'].inputs.find((i: { externalDependencies?: string[] }) => i.externalDependencies).externalDependencies, ['yaml', 'zod', 'cacache', '@huggingface/tokenizers', 'onnxruntime-node']);
  assert.ok(!JSON.stringify(p.targets).includes('package-lock.json'), 'no stage hashes the whole lockfile');
  assert.equal(p.targets.fetch.cache, true);
  assert.deepEqual(p.implicitDependencies.sort(), ['models-tiny-a', 'models-tiny-b']);
  const help = await nx(ws, ['run', 'uses-b:assemble-experts', '--help']);
  assert.match(help.stdout, /Seed \(an integer >= 0\)/);
  // build is where users pass --random-seed: its help lists the options it forwards, not "does nothing".
  const buildHelp = await nx(ws, ['run', 'uses-b:build', '--help']);
  const flat = buildHelp.stdout.replace(/\s+/g, ' ');
  assert.match(flat, /Executor: \.\/tools\/executors:build .*Build the model folder, or one stage of it\. Pass these options to `nx run <recipe>:build`/);
  assert.match(flat, /--randomSeed Seed \(an integer >= 0\)/);
  assert.doesNotMatch(buildHelp.stdout, /does nothing/);
});

test('the plugin is a local package Nx lists, and its generator runs by the package name', async () => {
  const list = await nx(ws, ['list']);
  assert.equal(list.exitCode, 0, list.stderr);
  assert.match(list.stdout, /Installed plugins:[\s\S]*@moe-forge\/executors \(executors,generators\)/);
  const caps = await nx(ws, ['list', '@moe-forge/executors']);
  assert.match(caps.stdout.replace(/\s+/g, ' '), /GENERATORS recipe : Create workspace-models\/<name>\/moe\.yml/);
  const g = await nx(ws, ['g', '@moe-forge/executors:recipe', 'by-name', '--base=../../models/tiny-a', '--experts=../../models/tiny-b,../../models/tiny-c', '--gateMode=random', '--dry-run']);
  assert.equal(g.exitCode, 0, g.stdout + g.stderr);
  assert.match(g.stdout, /CREATE workspace-models\/by-name\/moe\.yml/);
});

test('editing a model in the workspace makes exactly the recipes that use it affected, and re-runs their fetch', async () => {
  writeFileSync(join(ws, '.gitignore'), 'node_modules\ndist\n.nx\n.moe-cache\n');
  const first = await nx(ws, ['run-many', '-t', 'build', '-p', 'uses-b', 'uses-c']);
  assert.equal(first.exitCode, 0, first.stdout + first.stderr);
  await git(['init', '-q', '-b', 'main']);
  await git(['add', '-A']);
  await git(['commit', '-qm', 'workspace']);
  const cfg = join(ws, 'models', 'tiny-c', 'config.json');
  writeFileSync(cfg, JSON.stringify({ ...JSON.parse(readFileSync(cfg, 'utf8')), note: 'retrained' }));
  const a = await nx(ws, ['show', 'projects', '--affected', '--base=HEAD', '--type=app']);
  assert.equal(a.exitCode, 0, a.stderr);
  assert.deepEqual(a.stdout.trim().split('\n'), ['uses-c']);
  const b = await nx(ws, ['run-many', '-t', 'build', '-p', 'uses-b', 'uses-c']);
  assert.equal(b.exitCode, 0, b.stdout + b.stderr);
  assert.match(b.stdout, /nx run uses-b:fetch\s+\[local cache\]/);
  assert.match(b.stdout, /nx run uses-c:fetch\s*\n/, 'uses-c fetch ran again');
});

test('plugin options in nx.json rename targets and move stage outputs', async () => {
  const nxJson = JSON.parse(readFileSync(join(ws, 'nx.json'), 'utf8'));
  nxJson.plugins = [{ plugin: './tools/executors', options: { buildTargetName: 'merge', fetchTargetName: 'resolve-models', stagesDir: 'out/stages' } }];
  writeFileSync(join(ws, 'nx.json'), JSON.stringify(nxJson, null, 2));
  const r = await nx(ws, ['show', 'project', 'uses-b', '--json']);
  assert.equal(r.exitCode, 0, r.stderr);
  const p = JSON.parse(r.stdout);
  assert.ok(p.targets.merge && !p.targets.build && p.targets['resolve-models'] && !p.targets.fetch);
  assert.deepEqual(p.targets['embed-prompts'].dependsOn[2], { target: 'resolve-models', params: 'ignore' });
  assert.deepEqual(p.targets['resolve-models'].outputs, ['{workspaceRoot}/out/stages/uses-b/fetch']);
  const b = await nx(ws, ['run', 'uses-b:merge']);
  assert.equal(b.exitCode, 0, b.stdout + b.stderr);
  assert.ok(existsSync(join(ws, 'out', 'stages', 'uses-b', 'fetch', 'models.json')));
});
