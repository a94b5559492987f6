import { ForgeError } from '../errors';
import { CLI_ONLY, OPTIONS, OPTION_STAGES, type CliSpelling, type OptionSpec, type OptionStage } from './table';
import { checkSeed, checkShardSize } from './values';

type Table = typeof OPTIONS;
export type OptionName = keyof Table;

type ValueOf<S> = S extends { type: 'enum'; values: readonly (infer V)[] } ? V : S extends { type: 'boolean' } ? boolean : S extends { type: 'seed' | 'size' | 'count' } ? number : string;

/** The options as the stages use them: typed by the table (an enum is its values' union), defaults filled in. */
export type StageOptions = { -readonly [K in OptionName]: Table[K] extends { default: unknown } ? ValueOf<Table[K]> : ValueOf<Table[K]> | undefined };

const entries = Object.entries(OPTIONS) as [OptionName, OptionSpec][];

/** The library's name for an option (`api` in its row; the Nx name where absent); never for one it does not take. */
type ApiNameOf<K extends OptionName> = Table[K] extends { api: false } ? never : Table[K] extends { api: infer A extends string } ? A : K;

/** The options as the library (`mergeRecipe`) takes them, by its names: every one optional, made from the table. */
export type ApiOptions = { [K in OptionName as ApiNameOf<K>]?: ValueOf<Table[K]> };

/** The command's spelling of an option, for messages: `--random-seed`; an option with none keeps its Nx name. */
const shownName = (name: string, spec: OptionSpec) => (spec.cli ? `--${spec.cli.flag}` : name);

/** `a or b`, `a, b or c`. */
const choices = (values: readonly string[]) => (values.length > 1 ? `${values.slice(0, -1).join(', ')} or ${values.at(-1)}` : values[0]!);

/** One option's value, checked against the table; messages name the option as the command spells it. */
export function checkOptionValue(name: string, spec: OptionSpec, value: unknown): unknown {
  const shown = shownName(name, spec);
  switch (spec.type) {
    case 'seed':
      return checkSeed(value, shown);
    case 'size':
      return checkShardSize(value, shown, spec.min);
    case 'enum':
      if (typeof value !== 'string' || !spec.values.includes(value)) throw new ForgeError('bad_flag', `${shown} must be ${choices(spec.values)}, got ${JSON.stringify(typeof value === 'string' ? value : String(value))}`, { field: shown });
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') throw new ForgeError('bad_flag', `${shown} must be true or false, got ${JSON.stringify(String(value))}`, { field: shown });
      return value;
    case 'count':
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw new ForgeError('bad_flag', `${shown} must be a count, got ${JSON.stringify(String(value))}`, { field: shown });
      return value;
    case 'string':
      if (typeof value !== 'string' || value === '') throw new ForgeError('bad_flag', `${shown} must be a non-empty string, got ${JSON.stringify(String(value))}`, { field: shown });
      return value;
  }
}

/**
 * The executors' options (Nx has checked them against stage-options.json; what a JSON schema cannot say, a seed
 * of 1e20 being a "multiple of 1", gets the command's message). Options not in the table are left to Nx's check.
 */
export function parseStageOptions(raw: unknown): StageOptions {
  const given = (raw ?? {}) as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [name, spec] of entries) {
    const v = given[name];
    if (v !== undefined) out[name] = checkOptionValue(name, spec, v);
    else if ('default' in spec) out[name] = spec.default;
  }
  return out as StageOptions;
}

/**
 * The library's options as the stages take them: each option by its library name (the table's `api`), defaults
 * filled in; those the library takes otherwise (recipe, output, evalPrompts) left undefined for the caller to set.
 * The one mapping between the two sets of names, so a new option reaches the pipeline with its row alone.
 */
export function stageOptionsFromApi(given: ApiOptions): StageOptions {
  const from = given as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const [name, spec] of entries) {
    const v = spec.api === false ? undefined : from[spec.api ?? name];
    if (v !== undefined) out[name] = v;
    else if ('default' in spec) out[name] = spec.default;
  }
  return out as StageOptions;
}

/** The library's name for each option it takes (`randomSeed` → `seed`), from the table. */
export function apiNames(): Partial<Record<OptionName, string>> {
  return Object.fromEntries(entries.filter(([, s]) => s.api !== false).map(([name, s]) => [name, s.api ?? name]));
}

/** The options whose value changes a stage's result: what its cache must hash (a location or a cache folder does not). */
export function optionsForStage(stage: OptionStage): OptionName[] {
  return entries.filter(([, spec]) => spec.stages.includes(stage)).map(([name]) => name);
}

/**
 * The options the command line hands a stage through its slice (the recipe stage writes them there): every option
 * the stage reads, its result changing or not, but those a task reads before its slice. The pipeline table takes
 * each stage's list from here, so the stage-option relation is stated once, in the options table.
 */
export function sliceOptions(stage: OptionStage): OptionName[] {
  return entries.filter(([, spec]) => !spec.beforeSlice && (spec.stages.includes(stage) || (spec.reads ?? []).includes(stage))).map(([name]) => name);
}

/** Every stage an option is read by (changing its result or not). */
export function stagesReading(name: OptionName): OptionStage[] {
  const spec: OptionSpec = OPTIONS[name];
  return OPTION_STAGES.filter((s) => spec.stages.includes(s) || (spec.reads ?? []).includes(s));
}

// ---- Nx: stage-options.json ----

function jsonProperty(spec: OptionSpec): Record<string, unknown> {
  const description = { description: spec.description };
  switch (spec.type) {
    case 'string':
      return { type: 'string', minLength: 1, ...description };
    case 'seed':
      return { type: 'number', minimum: 0, multipleOf: 1, default: spec.default, ...description };
    case 'size':
      // The command's parse_kmb text or a number; the default as mergekit-moe's users write it.
      return {
        oneOf: [
          { type: 'number', minimum: 1, multipleOf: 1 },
          { type: 'string', pattern: '^\\s*[0-9]+(\\.[0-9]+)?\\s*[kKmMbBgG]?\\s*$' },
        ],
        ...(spec.default !== undefined ? { default: String(spec.default) } : {}),
        ...description,
      };
    case 'enum':
      return { type: 'string', enum: [...spec.values], ...(spec.default !== undefined ? { default: spec.default } : {}), ...description };
    case 'boolean':
      return { type: 'boolean', default: spec.default, ...description };
    case 'count':
      return { type: 'number', minimum: 0, multipleOf: 1, ...description };
  }
}

/** stage-options.json, the schema Nx checks every stage's options against (static for Nx: committed, see tools/write-stage-options.ts). */
export function nxSchema(): Record<string, unknown> {
  return {
    $schema: 'https://json-schema.org/schema',
    version: 2,
    title: 'moe-forge stage options',
    description:
      'Build the model folder, or one stage of it. Pass these options to `nx run <recipe>:build` (e.g. --random-seed=1): build forwards each to the stages it changes and the others stay cached. Nx checks them before any stage runs and rejects unknown ones.',
    $comment: 'Generated from libs/options/table.ts by `npm run options:schema`; test/unit/options.test.ts fails when this file differs.',
    type: 'object',
    properties: Object.fromEntries(entries.filter(([, s]) => s.nx !== false).map(([name, spec]) => [name, jsonProperty(spec)])),
    additionalProperties: false,
  };
}

/** The file's text: two-space JSON, as committed. */
export const nxSchemaText = () => JSON.stringify(nxSchema(), null, 2) + '\n';

// ---- the command: flags and --help ----

/** One flag of the `mergekit-moe` command, from the table. */
export interface FlagSpec {
  /** The table's name (randomSeed); the flag is `--${flag}`. */
  option: string;
  name: string;
  kind: CliSpelling['kind'];
  short?: string;
  noEffect?: boolean;
  help: string;
}

const cliEntries = (): [string, OptionSpec][] => [...entries, ...Object.entries(CLI_ONLY)].filter(([, s]) => s.cli !== undefined);

/** The command's flags: the shared options with a command spelling, then the command's own. */
export function cliFlags(): FlagSpec[] {
  return cliEntries().map(([option, spec]) => ({ option, name: spec.cli!.flag, kind: spec.cli!.kind, ...(spec.cli!.short ? { short: spec.cli!.short } : {}), ...(spec.noEffect ? { noEffect: true } : {}), help: spec.cli!.help ?? spec.description }));
}

/** The command's --help. */
export function helpText(): string {
  const lines = cliFlags().map((f) => {
    const flag = f.kind === 'negatable' ? `--${f.name}/--no-${f.name}` : `--${f.name}${f.kind === 'value' ? ' VALUE' : ''}${f.short ? `, -${f.short}` : ''}`;
    return `  ${flag.padEnd(54)} ${f.help}`;
  });
  return `Usage: mergekit-moe CONFIG_PATH OUT_PATH [options]\n\nMerge dense models into a Mixture-of-Experts checkpoint from a mergekit-moe YAML recipe.\n\nOptions:\n${lines.join('\n')}\n`;
}

/**
 * The shared options as the command gave them (parsed flag values by flag name), checked by the table with the
 * command's messages; defaults filled in. The command's own flags stay with the command.
 */
export function cliStageOptions(values: Record<string, string | boolean | number>): StageOptions {
  const out: Record<string, unknown> = {};
  for (const [name, spec] of entries) {
    const v = spec.cli ? values[spec.cli.flag] : undefined;
    if (v !== undefined) out[name] = checkOptionValue(name, spec, v);
    else if ('default' in spec) out[name] = spec.default;
  }
  return out as StageOptions;
}
