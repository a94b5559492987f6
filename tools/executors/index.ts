import { dirname, basename } from 'node:path';
import type { CreateNodesV2, TargetConfiguration } from '@nx/devkit';

/**
 * Every workspace-models/<name>/moe.yml is a project <name> with the stage targets chained by dependsOn.
 * Options are forwarded down the chain, so `nx run x:build --random-seed=1` reaches every stage.
 */
export const STAGES = ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'write'] as const;

const DESCRIPTIONS: Record<(typeof STAGES)[number], string> = {
  fetch: 'Resolve the models, validate recipe and models, write models.json (never cached: looks outside the workspace).',
  'embed-prompts': 'Tokenize prompts and compute their states; per-prompt states are cached by content.',
  'build-gates': 'Compute router weights from prompt states (gates.safetensors, gates.json).',
  'assemble-experts': 'Plan the output: architecture, config.json, every tensor with its sources (plan.json).',
  write: 'Stream the model folder from the plan; skipped when the plan and the folder are unchanged.',
};

export function recipeTargets(projectRoot: string, projectName: string): Record<string, TargetConfiguration> {
  const stageDir = (s: string) => `{workspaceRoot}/dist/stages/${projectName}/${s}`;
  const targets: Record<string, TargetConfiguration> = {};
  const REPORT_INPUTS = ['{projectRoot}/**/*.yml', '{projectRoot}/**/*.yaml', '{projectRoot}/**/*.jsonl'];
  STAGES.forEach((stage, i) => {
    const prev = i > 0 ? STAGES[i - 1] : undefined;
    targets[stage] = {
      executor: `./tools/executors:${stage}`,
      options: {},
      // Command-line options reach write and assemble-experts, the stages they change (random gates are
      // drawn there); the earlier stages ignore them so that, e.g., a new seed or shard size keeps their cache.
      dependsOn: prev ? [{ target: prev, params: stage === 'write' ? 'forward' : 'ignore' }, ...(stage === 'write' ? [{ target: 'report', params: 'forward' as const }] : [])] : [],
      cache: stage !== 'fetch' && stage !== 'write',
      // Upstream results, not their run statistics (stats.json), so a cache hit upstream keeps this stage cached.
      inputs: ['recipe', 'forgeCode', ...(prev ? [{ dependentTasksOutputFiles: '**/{models,prompt-states,gates,plan}.json', transitive: true }] : [])],
      outputs: stage === 'write' ? [] : [stageDir(stage)],
      metadata: { description: DESCRIPTIONS[stage] },
    };
  });
  // After build-gates, beside the chain: write puts its summary in the model card. Command-line options reach it
  // (a new seed draws new random gates); held-out prompt files in the recipe's folder are among its inputs.
  targets.report = {
    executor: './tools/executors:report',
    options: {},
    dependsOn: [{ target: 'build-gates', params: 'ignore' }],
    cache: true,
    inputs: ['recipe', 'forgeCode', ...REPORT_INPUTS, { dependentTasksOutputFiles: '**/{models,prompt-states,gates}.json', transitive: true }],
    outputs: [stageDir('report')],
    metadata: { description: 'Routing report (routing.json, routing.html): which expert each prompt reaches in each layer, accuracy, load, starving experts and why.' },
  };
  targets.build = {
    executor: 'nx:noop',
    dependsOn: [{ target: 'write', params: 'forward' }],
    cache: false,
    metadata: { description: `Build the MoE model folder dist/models/${projectName} (runs every stage).` },
  };
  void projectRoot;
  return targets;
}

export const createNodesV2: CreateNodesV2 = [
  'workspace-models/*/moe.yml',
  (files) =>
    files.map((file) => {
      const root = dirname(file);
      const name = basename(root);
      return [file, { projects: { [root]: { root, name, projectType: 'application', tags: ['moe-recipe'], targets: recipeTargets(root, name) } } }] as const;
    }),
];

export const createNodes = createNodesV2;
