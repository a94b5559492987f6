/**
 * The plugin's createNodesV2 called in-process on a temporary folder, as Nx tests its own plugins: the targets a
 * recipe gets are the pipeline table's (libs/pipeline/table.ts), with what each hashes, writes and runs after.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CreateNodesContextV2, TargetConfiguration } from '@nx/devkit';
import { createNodesV2, type MoeForgePluginOptions } from '../../tools/executors/index';
import { PIPELINE } from '../../libs/pipeline/table';
import { FIXTURES, tempDir } from '../helpers/tmp';

const ws = tempDir('moe-forge-plugin-');
cpSync(join(FIXTURES, 'tiny-llama'), join(ws, 'models'), { recursive: true });
mkdirSync(join(ws, 'workspace-models', 'x'), { recursive: true });
writeFileSync(
  join(ws, 'workspace-models', 'x', 'moe.yml'),
  `base_model: ../../models/tiny-a
gate_mode: hidden
experts:
  - source_model: ../../models/tiny-a
    positive_prompts: ["a"]
  - source_model: ../../models/tiny-b
    positive_prompts: ["b"]
`,
);
const context: CreateNodesContextV2 = { nxJsonConfiguration: {}, workspaceRoot: ws };

type Project = { root: string; name: string; tags: string[]; targets: Record<string, TargetConfiguration>; implicitDependencies?: string[] };

async function nodes(options?: MoeForgePluginOptions): Promise<Record<string, Project>> {
  const [glob, create] = createNodesV2;
  assert.equal(glob, 'workspace-models/*/moe.yml');
  const results = await create(['workspace-models/x/moe.yml'], options, context);
  assert.equal(results.length, 1);
  const [file, result] = results[0]!;
  assert.equal(file, 'workspace-models/x/moe.yml');
  return result.projects as Record<string, Project>;
}

const dependentFiles = (t: TargetConfiguration) => (t.inputs ?? []).flatMap((i) => (typeof i === 'object' && 'dependentTasksOutputFiles' in i ? [i.dependentTasksOutputFiles] : []));

test('a recipe is a project with one target per stage of the pipeline table, chained as the table\'s reads say', async () => {
  const projects = await nodes();
  const p = projects['workspace-models/x']!;
  assert.equal(p.name, 'x');
  assert.deepEqual(p.tags, ['moe-recipe']);
  assert.deepEqual(Object.keys(p.targets).sort(), ['build', 'check-options', 'watch', ...PIPELINE.map((s) => s.name)].sort());
  // Local models inside the workspace are projects the recipe depends on (nx affected follows model edits).
  assert.deepEqual(p.implicitDependencies, ['models-tiny-a', 'models-tiny-b']);
  assert.deepEqual(projects['models/tiny-b']?.tags, ['moe-model']);

  const t = p.targets;
  const check = { target: 'check-options', params: 'forward' };
  const recipe = { target: 'recipe', params: 'forward' };
  assert.deepEqual(t.recipe!.dependsOn, [check]);
  assert.deepEqual(t.fetch!.dependsOn, [check, recipe]);
  assert.deepEqual(t['embed-prompts']!.dependsOn, [check, recipe, { target: 'fetch', params: 'ignore' }]);
  // The report runs the merged model that assemble-experts planned.
  assert.deepEqual(t.report!.dependsOn, [check, recipe, { target: 'assemble-experts', params: 'ignore' }]);
  assert.deepEqual(t.write!.dependsOn, [check, recipe, { target: 'report', params: 'ignore' }]);
  assert.deepEqual(t.build!.dependsOn, [check, recipe, { target: 'write', params: 'ignore' }]);
  for (const s of PIPELINE) {
    assert.equal(t[s.name]!.executor, './tools/executors:stage');
    assert.deepEqual(t[s.name]!.outputs, [`{workspaceRoot}/dist/stages/x/${s.name}`]);
    assert.equal(t[s.name]!.metadata?.moeForgeStage, s.name);
    assert.equal(t[s.name]!.metadata?.description, s.description);
    assert.equal(t[s.name]!.cache, true);
  }
  assert.deepEqual(t.write!.options, { stagesDir: 'dist/stages/x', outputPath: 'dist/models/x' });

  // Only the recipe stage hashes the whole recipe; the others their slice of it and the files they read.
  const hashesRecipe = PIPELINE.filter((s) => (t[s.name]!.inputs ?? []).includes('recipe')).map((s) => s.name);
  assert.deepEqual(hashesRecipe, ['recipe']);
  assert.deepEqual(dependentFiles(t.fetch!), ['**/fetch.slice.json']);
  // Not models.json: an expert's weights do not change prompt states; the base's content id (base-model.json) does.
  assert.deepEqual(dependentFiles(t['embed-prompts']!), ['**/{embed-prompts.slice.json,base-model.json}']);
  assert.deepEqual(dependentFiles(t.report!), ['**/{report.slice.json,models.json,prompt-states.json,gates.json,plan.json}']);
  assert.ok(t.fetch!.inputs!.some((i) => typeof i === 'object' && 'runtime' in i && /model-ids/.test(i.runtime)), 'fetch hashes the models\' content ids');
  assert.ok(t.write!.inputs!.some((i) => typeof i === 'object' && 'runtime' in i && /output-state/.test(i.runtime)), 'write hashes the output folder\'s state');
  assert.ok(t.report!.inputs!.includes('{projectRoot}/**/*.jsonl'), 'held-out prompt files');
});

test('renamed targets keep the chain under their new names', async () => {
  const t = (await nodes({ fetchTargetName: 'resolve', recipeTargetName: 'split', buildTargetName: 'merge' }))['workspace-models/x']!.targets;
  assert.ok(t.resolve && t.split && t.merge && !t.fetch && !t.recipe && !t.build);
  assert.deepEqual(t['embed-prompts']!.dependsOn, [{ target: 'check-options', params: 'forward' }, { target: 'split', params: 'forward' }, { target: 'resolve', params: 'ignore' }]);
  assert.equal(t.resolve!.metadata?.moeForgeStage, 'fetch');
});

test('bad plugin options are refused in one line naming the option and what it takes', async () => {
  await assert.rejects(nodes({ fetchTargetname: 'resolve' } as MoeForgePluginOptions), /moe-forge plugin option "fetchTargetname" is unknown \(options: .*fetchTargetName.*\)/);
  await assert.rejects(nodes({ stagesDir: 3 } as unknown as MoeForgePluginOptions), /moe-forge plugin option "stagesDir" must be a non-empty string, got 3/);
  await assert.rejects(nodes({ buildTargetName: 'fetch' }), /moe-forge plugin options: the build and fetch targets are both named "fetch" \(set buildTargetName or fetchTargetName to another name\)/);
});
