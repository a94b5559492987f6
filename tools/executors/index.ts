import { existsSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { CreateNodesV2, TargetConfiguration } from '@nx/devkit';
import { parseYamlInput, readInputTextSync, RECIPE } from '../../libs/input';
import { runtimeCommand } from './fast-input';

/**
 * Every workspace-models/<name>/moe.yml is a project <name> with the stage targets chained by dependsOn.
 * Options are forwarded down the chain, so `nx run x:build --random-seed=1` reaches the stages it changes.
 * Every local model folder inside the workspace that a recipe uses is a project too (tag moe-model), and the
 * recipe depends on it: `nx affected` then marks exactly the recipes whose models changed.
 */
export const STAGES = ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'write'] as const;
type Stage = (typeof STAGES)[number];

type TargetKind = Stage | 'build' | 'check-options' | 'report';

/** Each target's option name, as Nx's own plugins name theirs (`buildTargetName`, `serveTargetName`, ...). */
export const TARGET_NAME_OPTIONS: Record<TargetKind, string> = {
  build: 'buildTargetName',
  'check-options': 'checkOptionsTargetName',
  fetch: 'fetchTargetName',
  'embed-prompts': 'embedPromptsTargetName',
  'build-gates': 'buildGatesTargetName',
  'assemble-experts': 'assembleExpertsTargetName',
  report: 'reportTargetName',
  write: 'writeTargetName',
};

/** Plugin options, in nx.json: `{ "plugin": "./tools/executors/plugin.js", "options": { ... } }` (as @nx/vite takes them). */
export interface MoeForgePluginOptions {
  buildTargetName?: string;
  checkOptionsTargetName?: string;
  fetchTargetName?: string;
  embedPromptsTargetName?: string;
  buildGatesTargetName?: string;
  assembleExpertsTargetName?: string;
  reportTargetName?: string;
  writeTargetName?: string;
  /** Deprecated: target names by stage (`{ "build": "merge" }`); still honoured, with a warning. */
  targetNames?: Partial<Record<TargetKind, string>>;
  /** Stage outputs go to <stagesDir>/<project>/<stage> (default dist/stages). */
  stagesDir?: string;
  /** Model folders go to <modelsDir>/<project> (default dist/models). */
  modelsDir?: string;
}

const DESCRIPTIONS: Record<Stage, string> = {
  fetch: 'Resolve the models, validate recipe and models, write models.json (cached on the models\' content ids and Hub commits).',
  'embed-prompts': 'Tokenize prompts and compute their states; per-prompt states are cached by content.',
  'build-gates': 'Compute router weights from prompt states (gates.safetensors, gates.json).',
  'assemble-experts': 'Plan the output: architecture, config.json, every tensor with its sources (plan.json).',
  write: 'Stream the model folder from the plan; a cache hit when neither the inputs nor the folder changed (the folder itself is not an Nx output).',
};

/**
 * The packages whose code each stage runs (their versions are hashed from the lockfile), instead of the whole
 * lockfile: a bump of an unrelated package keeps every recipe cached.
 */
export const STAGE_PACKAGES: Record<Stage, string[]> = {
  fetch: ['yaml', 'zod', 'cacache', '@huggingface/hub'],
  'embed-prompts': ['yaml', 'zod', 'cacache', '@huggingface/tokenizers', 'onnxruntime-node'],
  'build-gates': ['yaml', 'zod'],
  'assemble-experts': ['yaml', 'zod'],
  write: ['yaml', 'zod', '@huggingface/tokenizers'],
};

/** The report computes held-out prompts' states (tokenizer, forward pass, cache). */
export const REPORT_PACKAGES = ['yaml', 'zod', 'cacache', '@huggingface/tokenizers', 'onnxruntime-node'];

const COMMIT = /^[0-9a-f]{40}$/;
const REPO_ID = /^[A-Za-z0-9][\w.-]*(\/[\w.-]+)?$/;

interface RecipeModels {
  /** Workspace-relative folders of local models inside the workspace. */
  workspaceModels: string[];
  /** Hub references not pinned to a commit (a branch can move: model-ids resolves it on every build). */
  floatingHubRefs: string[];
}

function referencePath(input: unknown): { path: string; revision: string | null } | null {
  const split = (s: string) => {
    const [path, revision] = s.split('@');
    return { path: path!.trim(), revision: revision?.trim() || null };
  };
  if (typeof input === 'string') return split(input);
  if (input && typeof input === 'object' && 'model' in input) {
    const m = (input as { model: unknown }).model;
    if (typeof m === 'string') return split(m);
    if (m && typeof m === 'object' && typeof (m as { path?: unknown }).path === 'string') {
      const r = split((m as { path: string }).path);
      const rev = (m as { revision?: unknown }).revision;
      return { path: r.path, revision: typeof rev === 'string' ? rev : r.revision };
    }
  }
  return null;
}

/** What the plugin needs from a recipe; a recipe that does not parse gets no extras (fetch reports the error). */
export function recipeModels(workspaceRoot: string, recipeFile: string): RecipeModels {
  const out: RecipeModels = { workspaceModels: [], floatingHubRefs: [] };
  let doc: Record<string, unknown>;
  try {
    // The recipe reader's limits: a FIFO in place of moe.yml must not hang the project graph.
    const file = join(workspaceRoot, recipeFile);
    doc = parseYamlInput(readInputTextSync(file, RECIPE), file, RECIPE).data as Record<string, unknown>;
  } catch {
    return out;
  }
  if (!doc || typeof doc !== 'object') return out;
  const list = (v: unknown) => (Array.isArray(v) ? v : []).map((e) => (e && typeof e === 'object' ? (e as { source_model?: unknown }).source_model : undefined));
  const inputs = [doc.base_model, ...list(doc.experts), ...list(doc.shared_experts)];
  const recipeDir = join(workspaceRoot, dirname(recipeFile));
  for (const input of inputs) {
    const ref = referencePath(input);
    if (!ref || !ref.path) continue;
    const abs = resolve(recipeDir, ref.path.startsWith('~/') ? join(process.env.HOME ?? '/', ref.path.slice(2)) : ref.path);
    if (existsSync(abs)) {
      const rel = relative(workspaceRoot, abs);
      const usable = rel && !rel.startsWith('..') && !isAbsolute(rel) && !/^(node_modules|dist|\.nx)(\/|\\|$)/.test(rel);
      if (usable && statSync(abs).isDirectory() && !out.workspaceModels.includes(rel)) out.workspaceModels.push(rel.split(sep).join('/'));
    } else if (REPO_ID.test(ref.path) && !(ref.revision && COMMIT.test(ref.revision))) {
      out.floatingHubRefs.push(`${ref.path}@${ref.revision ?? 'main'}`);
    }
  }
  return out;
}

export const modelProjectName = (folder: string) => folder.replace(/[/\\]/g, '-');

export function recipeTargets(projectRoot: string, projectName: string, options: MoeForgePluginOptions = {}, models: RecipeModels = { workspaceModels: [], floatingHubRefs: [] }): Record<string, TargetConfiguration> {
  const name = (t: TargetKind) => (options as Record<string, string | undefined>)[TARGET_NAME_OPTIONS[t]] ?? options.targetNames?.[t] ?? t;
  const stagesDir = `${options.stagesDir ?? 'dist/stages'}/${projectName}`;
  const outputPath = `${options.modelsDir ?? 'dist/models'}/${projectName}`;
  const check = { target: name('check-options'), params: 'forward' as const };
  const targets: Record<string, TargetConfiguration> = {};
  // Nx checks options against a schema in the process that runs the task; the first stage to run never gets the
  // command line's options (they stop at the stages they change), so this cheap cached target checks them first.
  // It comes first in every dependsOn: Nx creates a task once, with the options of the first path that reaches it.
  targets[name('check-options')] = {
    executor: './tools/executors:check-options',
    options: {},
    cache: true,
    // The schema, and the code of the checks a JSON schema cannot make (shared with the CLI).
    inputs: ['{workspaceRoot}/tools/executors/stage-options.json', '{workspaceRoot}/tools/executors/options.ts', '{workspaceRoot}/tools/executors/check-options/*', '{workspaceRoot}/libs/cli/args.ts', '{workspaceRoot}/libs/errors/*.ts'],
    outputs: [],
    metadata: {
      description: 'Check the options given on the command line against the stages\' schema, before any stage runs.',
      technologies: ['moe-forge'],
    },
  };
  STAGES.forEach((stage, i) => {
    const prev = i > 0 ? STAGES[i - 1] : undefined;
    const inputs: TargetConfiguration['inputs'] = ['recipe', 'forgeCode', { externalDependencies: STAGE_PACKAGES[stage] }];
    if (stage === 'fetch') {
      // The models' content ids (memoised by path and stat key, libs/util/stat-key.js: milliseconds), so a model edited in place,
      // inside or outside the workspace, re-runs fetch; a Hub model pinned to a commit is its own content.
      inputs.push({ runtime: runtimeCommand('model-ids', [join(projectRoot, 'moe.yml').split(sep).join('/')]) });
    } else if (stage === 'write') {
      // Everything write reads from the stages before it (the plan, the gates, the report), and a token standing
      // for "the model folders this workspace wrote are as written" plus the base's chat template (see
      // output-state.js): an untouched workspace's build is a cache hit, a deleted or edited folder is written again.
      inputs.push({ dependentTasksOutputFiles: '**/{models.json,prompt-states.json,gates.json,gates.safetensors,plan.json,routing.json,routing.html}', transitive: true });
      inputs.push({ runtime: runtimeCommand('output-state', [projectName, stagesDir]) });
    } else {
      // Upstream results, not their run statistics (stats.json), so a cache hit upstream keeps this stage cached.
      inputs.push({ dependentTasksOutputFiles: '**/{models,prompt-states,gates,plan}.json', transitive: true });
    }
    targets[name(stage)] = {
      // One executor for every stage (tools/executors/stage): Nx's batch mode runs a chain in one process.
      executor: './tools/executors:stage',
      options: stage === 'write' ? { stagesDir, outputPath } : { stagesDir },
      // Command-line options reach write and assemble-experts, the stages they change (random gates are
      // drawn there); the earlier stages ignore them so that, e.g., a new seed or shard size keeps their cache.
      dependsOn: [check, ...(prev ? [{ target: name(prev), params: stage === 'write' ? ('forward' as const) : ('ignore' as const) }] : []), ...(stage === 'write' ? [{ target: name('report'), params: 'forward' as const }] : [])],
      // write's Nx output is its small stats file, never the model folder (tens of GB Nx would copy).
      cache: true,
      inputs,
      outputs: [`{workspaceRoot}/${stagesDir}/${stage}`],
      metadata: {
        description: DESCRIPTIONS[stage] + (stage === 'fetch' && models.floatingHubRefs.length ? ` ${models.floatingHubRefs.join(', ')} name a branch: each build asks the hub for its commit (offline: the cached one).` : ''),
        technologies: ['moe-forge'],
        moeForgeStage: stage,
        help: { command: `npx nx run ${projectName}:${name(stage)} --help`, example: { options: stage === 'write' ? { outputPath: `out/${projectName}` } : stage === 'assemble-experts' ? { randomSeed: 1 } : {} } },
      },
    };
  });
  // After assemble-experts, beside the chain (it runs the merged model that plan.json and the gates describe): write
  // puts its summary in the model card. Command-line options reach it and its plan (a new seed draws new random
  // gates); held-out prompt files in the recipe's folder are among its inputs.
  targets[name('report')] = {
    executor: './tools/executors:stage',
    options: { stagesDir },
    dependsOn: [check, { target: name('assemble-experts'), params: 'forward' }],
    cache: true,
    inputs: [
      'recipe',
      'forgeCode',
      '{projectRoot}/**/*.yml',
      '{projectRoot}/**/*.yaml',
      '{projectRoot}/**/*.jsonl',
      { externalDependencies: REPORT_PACKAGES },
      { dependentTasksOutputFiles: '**/{models,prompt-states,gates,plan}.json', transitive: true },
    ],
    outputs: [`{workspaceRoot}/${stagesDir}/report`],
    metadata: {
      description: 'Routing report (routing.json, routing.html): which expert each prompt reaches in each layer, accuracy, load, starving experts and why.',
      technologies: ['moe-forge'],
      moeForgeStage: 'report',
      help: { command: `npx nx run ${projectName}:${name('report')} --help`, example: { options: { evalPrompts: 'held-out.yml' } } },
    },
  };
  targets[name('build')] = {
    // Its own executor (which does nothing) so that `nx run x:build --help` lists the options it forwards; cached
    // on its options alone, so a no-op build starts no process for it.
    executor: './tools/executors:build',
    dependsOn: [check, { target: name('write'), params: 'forward' }],
    cache: true,
    inputs: [],
    outputs: [],
    metadata: {
      description: `Build the MoE model folder ${outputPath} (runs every stage).`,
      technologies: ['moe-forge'],
      help: { command: `npx nx run ${projectName}:${name('build')} --help`, example: { options: { randomSeed: 1, outShardSize: '2b' } } },
    },
  };
  return targets;
}

export const createNodesV2: CreateNodesV2<MoeForgePluginOptions> = [
  'workspace-models/*/moe.yml',
  (files, options, context) => {
    warnDeprecated(options);
    return files.map((file) => {
      const root = dirname(file);
      const name = basename(root);
      const models = recipeModels(context.workspaceRoot, file);
      const projects: Record<string, { root: string; name: string; projectType: 'application' | 'library'; tags: string[]; targets: Record<string, TargetConfiguration>; implicitDependencies?: string[] }> = {
        [root]: { root, name, projectType: 'application', tags: ['moe-recipe'], targets: recipeTargets(root, name, options ?? {}, models), implicitDependencies: models.workspaceModels.map(modelProjectName) },
      };
      for (const m of models.workspaceModels) if (m !== root) projects[m] = { root: m, name: modelProjectName(m), projectType: 'library', tags: ['moe-model'], targets: {} };
      return [file, { projects }] as const;
    });
  },
];

export const createNodes = createNodesV2;

let warned = false;

/** The old `targetNames` map still works; once per process, Nx's output says what replaces it. */
export function warnDeprecated(options: MoeForgePluginOptions | undefined, warn: (line: string) => void = (l) => console.warn(l)): void {
  if (!options?.targetNames || warned) return;
  warned = true;
  const instead = Object.entries(options.targetNames).map(([t, n]) => `"${TARGET_NAME_OPTIONS[t as TargetKind] ?? t}": "${n}"`);
  warn(`moe-forge plugin: the option "targetNames" is deprecated; name each target as Nx's plugins do: ${instead.join(', ')}`);
}
