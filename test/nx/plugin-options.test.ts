/** The plugin's options, called in-process as Nx calls them: target names as Nx's own plugins take them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { recipeTargets, TARGET_NAME_OPTIONS, warnDeprecated } from '../../tools/executors/index';

test('every target is renamed by its <name>TargetName option, and dependsOn follows the new names', () => {
  const t = recipeTargets('workspace-models/x', 'x', { buildTargetName: 'merge', fetchTargetName: 'resolve-models', checkOptionsTargetName: 'options' });
  assert.ok(t.merge && !t.build && t['resolve-models'] && !t.fetch && t.options && !t['check-options']);
  assert.deepEqual(t['embed-prompts']!.dependsOn, [{ target: 'options', params: 'forward' }, { target: 'recipe', params: 'forward' }, { target: 'resolve-models', params: 'ignore' }]);
  const all = Object.fromEntries(Object.values(TARGET_NAME_OPTIONS).map((o, i) => [o, `t${i}`]));
  assert.deepEqual(Object.keys(recipeTargets('workspace-models/x', 'x', all)).sort(), Object.values(all).sort());
});

test('the old targetNames map still works, with a one-time warning naming the options that replace it', () => {
  const t = recipeTargets('workspace-models/x', 'x', { targetNames: { build: 'merge', 'embed-prompts': 'embed' } });
  assert.ok(t.merge && t.embed && !t.build);
  const lines: string[] = [];
  warnDeprecated({ targetNames: { build: 'merge', 'embed-prompts': 'embed' } }, (l) => lines.push(l));
  warnDeprecated({ targetNames: { build: 'merge' } }, (l) => lines.push(l));
  assert.deepEqual(lines, ['moe-forge plugin: the option "targetNames" is deprecated; name each target as Nx\'s plugins do: "buildTargetName": "merge", "embedPromptsTargetName": "embed"']);
  // The new option wins over the old map.
  assert.ok(recipeTargets('workspace-models/x', 'x', { buildTargetName: 'a', targetNames: { build: 'b' } }).a);
});
