// The options of both front ends, declared once (table.ts); the Nx schema, the command's flags and --help, and
// the executors' parsing are made from it (schema.ts).
export { OPTIONS, CLI_ONLY, OPTION_STAGES, LAYOUTS, RNGS, SHARD_ORDER_NAMES, DEVICE_NAMES, FORWARD_PRECISIONS, DEFAULT_SHARD_BYTES, type OptionSpec, type OptionStage, type CliSpelling, type Layout, type DeviceChoice } from './table';
export { checkOptionValue, parseStageOptions, optionsForStage, sliceOptions, stagesReading, nxSchema, nxSchemaText, cliFlags, helpText, cliStageOptions, stageOptionsFromApi, apiNames, type StageOptions, type ApiOptions, type OptionName, type FlagSpec } from './schema';
export { checkSeed, checkShardSize, parseKmb } from './values';
