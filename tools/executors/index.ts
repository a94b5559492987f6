import { existsSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import type { CreateNodesV2, TargetConfiguration } from '@nx/devkit';
import { parseYamlInput, readInputTextSync, RECIPE } from '../../libs/input';
import { runtimeCommand } from './fast-input';
import { keyFiles, PIPELINE, STAGE_NAMES, upstream, type StageName } from '../../libs/pipeline';
import { ForgeError } from '../../libs/errors';

/**
 * Every workspace-models/<name>/moe.yml is a project <name> with the stage targets chained by dependsOn.
 * Options are forwarded down the chain, so `nx run x:build --random-seed=1` reaches the stages it changes.
 * Every local model folder inside the workspace that a recipe uses is a project too (tag moe-model), and the
 * recipe depends on it: `nx affected` then marks exactly the recipes whose models changed.
 */
export const STAGES = STAGE_NAMES;
type Stage = StageName;

type TargetKind = Stage | 'build' | 'check-options' | 'watch';

/** Each target's option name, as Nx's own plugins name theirs (`buildTargetName`, `serveTargetName`, ...). */
export const TARGET_NAME_OPTIONS: Record<TargetKind, string> = {
  build: 'buildTargetName',
  watch: 'watchTargetName',
  'check-options': 'checkOptionsTargetName',
  recipe: 'recipeTargetName',
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
  watchTargetName?: string;
  checkOptionsTargetName?: string;
  recipeTargetName?: string;
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
  const split = { target: name('recipe'), params: 'forward' as const };
  const targets: Record<string, TargetConfiguration> = {};
  // Nx checks options against a schema in the process that runs the task; the first stage to run never gets the
  // command line's options (they stop at the stages they change), so this cheap cached target checks them first.
  // It comes first in every dependsOn: Nx creates a task once, with the options of the first path that reaches it.
  targets[name('check-options')] = {
    executor: './tools/executors:check-options',
    options: {},
    cache: true,
    // The schema, and the options table with the checks a JSON schema cannot make (shared with the CLI).
    inputs: ['{workspaceRoot}/tools/executors/stage-options.json', '{workspaceRoot}/tools/executors/options.ts', '{workspaceRoot}/tools/executors/check-options/*', '{workspaceRoot}/libs/options/*.ts', '{workspaceRoot}/libs/errors/*.ts'],
    outputs: [],
    metadata: {
      description: 'Check the options given on the command line against the stages\' schema, before any stage runs.',
      technologies: ['moe-forge'],
    },
  };
  // Every stage target from the pipeline table (libs/pipeline): what it hashes, what it runs after, its outputs.
  for (const decl of PIPELINE) {
    const stage = decl.name;
    const h = decl.hashes;
    const inputs: TargetConfiguration['inputs'] = [...(h.recipe ? ['recipe'] : []), 'forgeCode', ...(h.projectFiles ?? []), { externalDependencies: h.packages }];
    // The files it reads from the stages before it (their indexes, not run statistics: a cache hit upstream keeps it cached).
    const keys = keyFiles(stage);
    if (keys.length) inputs.push({ dependentTasksOutputFiles: keys.length === 1 ? `**/${keys[0]}` : `**/{${keys.join(',')}}`, transitive: true });
    // fetch: the models' content ids (memoised by path and stat key), so a model edited in place, inside or outside the
    // workspace, re-runs it; write: a token for "the model folders this workspace wrote are as written" (output-state.js).
    if (h.runtime === 'model-ids') inputs.push({ runtime: runtimeCommand('model-ids', [join(projectRoot, 'moe.yml').split(sep).join('/')]) });
    if (h.runtime === 'output-state') inputs.push({ runtime: runtimeCommand('output-state', [projectName, stagesDir]) });
    const example = Object.fromEntries(Object.entries(decl.example).map(([k, v]) => [k, typeof v === 'string' ? v.replace('<project>', projectName) : v]));
    targets[name(stage)] = {
      // One executor for every stage (tools/executors/stage): Nx's batch mode runs a chain in one process.
      executor: './tools/executors:stage',
      options: stage === 'write' ? { stagesDir, outputPath } : { stagesDir },
      // Command-line options go to the recipe stage alone, which hands each stage those it uses (its slice): a new
      // shard size re-runs the plan and the write, not the report. check-options and the recipe stage come first:
      // Nx creates a task once, with the options of the first path that reaches it.
      dependsOn: [check, ...(stage === 'recipe' ? [] : [split]), ...upstream(stage).filter((u) => u !== 'recipe').map((u) => ({ target: name(u), params: 'ignore' as const }))],
      // write's Nx output is its small stats file, never the model folder (tens of GB Nx would copy).
      cache: true,
      inputs,
      outputs: [`{workspaceRoot}/${stagesDir}/${stage}`],
      metadata: {
        description: decl.description + (stage === 'fetch' && models.floatingHubRefs.length ? ` ${models.floatingHubRefs.join(', ')} name a branch: each build asks the hub for its commit (offline: the cached one).` : ''),
        technologies: ['moe-forge'],
        moeForgeStage: stage,
        help: { command: `npx nx run ${projectName}:${name(stage)} --help`, example: { options: example } },
      },
    };
  }
  targets[name('build')] = {
    // Its own executor, so that `nx run x:build --help` lists the options it forwards. Never cached: it says
    // what ran in this build and what Nx restored, with the notes of what ran (tools/executors/log.ts).
    executor: './tools/executors:build',
    // The stages no other stage reads from: the model folder (write).
    dependsOn: [check, split, ...PIPELINE.filter((d) => !PIPELINE.some((o) => o.reads.some((r) => r.from === d.name))).map((d) => ({ target: name(d.name), params: 'ignore' as const }))],
    cache: false,
    metadata: {
      description: `Build the MoE model folder ${outputPath} (runs every stage).`,
      technologies: ['moe-forge'],
      help: { command: `npx nx run ${projectName}:${name('build')} --help`, example: { options: { randomSeed: 1, outShardSize: '2b' } } },
    },
  };
  targets[name('watch')] = {
    // The whole build in one process, again on each save of moe.yml (libs/pipeline/watch.ts): a long-running task,
    // never cached, run by hand (nothing depends on it).
    executor: './tools/executors:watch',
    options: { stagesDir, outputPath },
    continuous: true,
    cache: false,
    metadata: {
      description: `Build ${outputPath}, then again each time moe.yml is saved, until Ctrl-C (one process; a forward worker waits between builds; Nx's cache is not used, the prompt-state cache is).`,
      technologies: ['moe-forge'],
      help: { command: `npx nx run ${projectName}:${name('watch')} --help`, example: { options: { randomSeed: 1 } } },
    },
  };
  return targets;
}

export const createNodesV2: CreateNodesV2<MoeForgePluginOptions> = [
  'workspace-models/*/moe.yml',
  (files, options, context) => {
    checkPluginOptions(options);
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

/** The plugin's options in nx.json, checked before any project is made: a typo would otherwise be ignored silently. */
export function checkPluginOptions(options: MoeForgePluginOptions | undefined): void {
  if (options === undefined || options === null) return;
  const bad = (message: string, field: string) => new ForgeError('bad_option', message, { file: 'nx.json', field });
  if (typeof options !== 'object' || Array.isArray(options)) throw bad(`moe-forge plugin options must be an object, got ${JSON.stringify(options)}`, 'plugins[].options');
  const nameOptions = Object.values(TARGET_NAME_OPTIONS);
  const known = [...nameOptions, 'stagesDir', 'modelsDir', 'targetNames'];
  for (const [k, v] of Object.entries(options)) {
    if (!known.includes(k)) throw bad(`moe-forge plugin option "${k}" is unknown (options: ${known.join(', ')})`, k);
    if (k !== 'targetNames' && (typeof v !== 'string' || v.trim() === '')) throw bad(`moe-forge plugin option "${k}" must be a non-empty string, got ${JSON.stringify(v)}`, k);
  }
  // Two targets of one name: one would silently replace the other.
  const seen = new Map<string, string>();
  for (const [kind, option] of Object.entries(TARGET_NAME_OPTIONS)) {
    const n = (options as Record<string, string | undefined>)[option] ?? options.targetNames?.[kind as TargetKind] ?? kind;
    const other = seen.get(n);
    if (other !== undefined) throw bad(`moe-forge plugin options: the ${other} and ${kind} targets are both named "${n}" (set ${TARGET_NAME_OPTIONS[other as TargetKind]} or ${option} to another name)`, option);
    seen.set(n, kind);
  }
}

let warned = false;

/** The old `targetNames` map still works; once per process, Nx's output says what replaces it. */
export function warnDeprecated(options: MoeForgePluginOptions | undefined, warn: (line: string) => void = (l) => console.warn(l)): void {
  if (!options?.targetNames || warned) return;
  warned = true;
  const instead = Object.entries(options.targetNames).map(([t, n]) => `"${TARGET_NAME_OPTIONS[t as TargetKind] ?? t}": "${n}"`);
  warn(`moe-forge plugin: the option "targetNames" is deprecated; name each target as Nx's plugins do: ${instead.join(', ')}`);
}
