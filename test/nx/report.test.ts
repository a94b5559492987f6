/** The report target in a real Nx workspace: cached on what it reads, held-out prompts recomputed one by one. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, readFileSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { FIXTURES, tempDir } from '../helpers/tmp';
import { addRecipe, nx, throwawayWorkspace } from '../helpers/workspace';
import type { RoutingReport } from '../../libs/report';

const ws = throwawayWorkspace();
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
addRecipe(
  ws,
  'm',
  `base_model: ../../models/tiny-a
gate_mode: hidden
experts:
  - source_model: ../../models/tiny-b
    positive_prompts: ["Write a python function", "Fix this unit test"]
  - source_model: ../../models/tiny-c
    positive_prompts: ["Once upon a time"]
`,
  { targets: { report: { options: { evalPrompts: 'eval/held-out.yml' } } } },
);
const project = join(ws, 'workspace-models', 'm');
const evalFile = join(project, 'eval', 'held-out.yml');
mkdirSync(join(project, 'eval'));
writeFileSync(evalFile, '- expert: 0\n  prompts: ["Sort a list in rust", "Write a regex"]\n- expert: 1\n  prompts: ["A dragon tale"]\n');

const ranFrom = (stdout: string, target: string) => {
  const line = stdout.split('\n').find((l) => l.includes(`nx run m:${target}`));
  assert.ok(line, `${target} in the output`);
  return /\[(local|remote) cache\]|existing outputs match the cache/.test(line) ? 'cache' : 'run';
};
const stats = () => {
  const s = JSON.parse(readFileSync(join(ws, 'dist', 'stages', 'm', 'report', 'stats.json'), 'utf8')) as { computed: number; fromCache: number };
  return { computed: s.computed, fromCache: s.fromCache };
};
const report = () => JSON.parse(readFileSync(join(ws, 'dist', 'stages', 'm', 'report', 'routing.json'), 'utf8')) as RoutingReport;

test('build runs the report before write; it is a cache hit when nothing it reads changed; an edit recomputes only that prompt', async () => {
  const cold = await nx(ws, ['run', 'm:build']);
  assert.equal(cold.exitCode, 0, cold.stdout + cold.stderr);
  assert.equal(ranFrom(cold.stdout, 'report'), 'run');
  assert.deepEqual(stats(), { computed: 3, fromCache: 0 });
  assert.match(cold.stdout, /merged model on held-out texts: \d+% of tokens first to their intended expert \(chance \d+%\), \d+% within the top \d \(chance \d+%\); MaxVio \d+\.\d\d/);
  assert.ok(existsSync(join(ws, 'dist', 'models', 'm', 'routing.html')), 'the page beside the model card');
  assert.match(readFileSync(join(ws, 'dist', 'models', 'm', 'README.md'), 'utf8'), /## Routing[\s\S]*\| texts \| tokens first to the intended expert \|[\s\S]*\| held-out \| \d+% \|/);

  const again = await nx(ws, ['run', 'm:report']);
  assert.equal(again.exitCode, 0, again.stderr);
  assert.equal(ranFrom(again.stdout, 'report'), 'cache');

  // A held-out prompt edited: the report runs again and computes that prompt only.
  writeFileSync(evalFile, readFileSync(evalFile, 'utf8').replace('A dragon tale', 'A knight tale'));
  const held = await nx(ws, ['run', 'm:report']);
  assert.equal(held.exitCode, 0, held.stderr);
  assert.deepEqual([ranFrom(held.stdout, 'embed-prompts'), ranFrom(held.stdout, 'report')], ['cache', 'run']);
  assert.deepEqual(stats(), { computed: 1, fromCache: 2 });
  assert.ok(report().prompts.some((p) => p.set === 'heldout' && p.text === 'A knight tale'));
  // write is cached on the report's files too (nothing else changed): the model folder gets the new page.
  const built = await nx(ws, ['run', 'm:build']);
  assert.equal(built.exitCode, 0, built.stderr);
  assert.deepEqual([ranFrom(built.stdout, 'assemble-experts'), ranFrom(built.stdout, 'write')], ['cache', 'run']);
  assert.match(readFileSync(join(ws, 'dist', 'models', 'm', 'routing.html'), 'utf8'), /A knight tale/);

  // A recipe prompt edited: embed-prompts computes it alone, and the report routes it from there.
  const recipe = join(project, 'moe.yml');
  writeFileSync(recipe, readFileSync(recipe, 'utf8').replace('"Once upon a time"', '"Once upon a midnight dreary"'));
  const edited = await nx(ws, ['run', 'm:report']);
  assert.equal(edited.exitCode, 0, edited.stderr);
  const embed = JSON.parse(readFileSync(join(ws, 'dist', 'stages', 'm', 'embed-prompts', 'stats.json'), 'utf8'));
  assert.deepEqual([embed.computed, embed.fromCache], [1, 2]);
  assert.equal(ranFrom(edited.stdout, 'report'), 'run');
  assert.deepEqual(stats(), { computed: 0, fromCache: 3 });
  assert.ok(report().prompts.some((p) => p.set === 'train' && p.text === 'Once upon a midnight dreary'));

  // Held-out prompts outside the recipe's folder would change unseen by Nx: refused, saying why.
  const outside = await nx(ws, ['run', 'm:report', '--evalPrompts=../../held-out.yml', '--exclude-task-dependencies']);
  assert.notEqual(outside.exitCode, 0);
  assert.match(outside.stdout + outside.stderr, /evalPrompts must be a file inside the recipe's folder .* so that editing it re-runs the report/);

  const show = await nx(ws, ['show', 'project', 'm', '--json']);
  const targets = JSON.parse(show.stdout).targets;
  assert.match(targets.report.metadata.description, /Routing report/);
  assert.deepEqual(targets.write.dependsOn.map((d: { target: string }) => d.target), ['check-options', 'recipe', 'report']);
});

test('a file a stage reads but Nx would not hash is refused in one line saying why: a link out of the folder, a git-ignored file, a recipe other than moe.yml', async () => {
  const refused = async (args: string[], message: RegExp) => {
    const r = await nx(ws, ['run', 'm:report', ...args, '--exclude-task-dependencies']);
    assert.notEqual(r.exitCode, 0, args.join(' '));
    // One line (the pattern spans the message, and . matches no line break), never a stack.
    assert.match(r.stdout + r.stderr, message);
    assert.doesNotMatch(r.stdout + r.stderr, /internal error|\n\s+at .+:\d+:\d+/);
  };
  // A link in the recipe's folder to a file elsewhere: Nx hashes neither the link's target nor its edits.
  const outside = tempDir();
  writeFileSync(join(outside, 'held.yml'), '- expert: 1\n  prompts: ["A dragon tale"]\n');
  symlinkSync(join(outside, 'held.yml'), join(project, 'eval', 'link.yml'));
  await refused(['--evalPrompts=eval/link.yml'], /field evalPrompts: evalPrompts must be a file inside the recipe's folder .* \(it is a link to .*held\.yml\): Nx would not see its edits/);
  // A folder the recipe's .gitignore excludes: Nx does not hash it.
  writeFileSync(join(project, '.gitignore'), 'private/\n');
  mkdirSync(join(project, 'private'));
  writeFileSync(join(project, 'private', 'held.yml'), '- expert: 1\n  prompts: ["A dragon tale"]\n');
  await refused(['--evalPrompts=private/held.yml'], /field evalPrompts: evalPrompts must not be git-ignored, and workspace-models\/m\/\.gitignore excludes it: Nx would not see its edits/);
  // The recipe option names a file Nx does not hash as the recipe.
  cpSync(join(project, 'moe.yml'), join(project, 'variant.yml'));
  await refused(['--recipe=variant.yml'], /field recipe: recipe must be the folder's moe\.yml .*: Nx would not see its edits/);
  // A link that stays in the folder is read: its target is a file Nx hashes.
  symlinkSync('held-out.yml', join(project, 'eval', 'alias.yml'));
  const ok = await nx(ws, ['run', 'm:report', '--evalPrompts=eval/alias.yml', '--exclude-task-dependencies']);
  assert.equal(ok.exitCode, 0, ok.stdout + ok.stderr);
});
