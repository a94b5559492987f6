// One executor for every stage (the plugin's targets name their stage in metadata), so that Nx's batch mode
// (`--batch` or NX_BATCH_MODE=true) can run a recipe's whole chain in one process: see batch.js.
'use strict';
const STAGES = ['fetch', 'embed-prompts', 'build-gates', 'assemble-experts', 'report', 'write'];

/** The stage a target runs: its metadata (the plugin sets it; targets may be renamed), else its own name. */
function stageOf(context, project, target) {
  const config = context.projectsConfigurations?.projects?.[project]?.targets?.[target];
  const stage = config?.metadata?.moeForgeStage ?? target;
  if (!STAGES.includes(stage)) throw new Error(`target ${project}:${target} runs ./tools/executors:stage but names no stage (metadata.moeForgeStage: one of ${STAGES.join(', ')})`);
  return stage;
}

const implementation = (stage) => require(`../${stage}/impl.js`);

module.exports = function stageExecutor(options, context) {
  return implementation(stageOf(context, context.projectName, context.targetName))(options, context);
};
module.exports.stageOf = stageOf;
module.exports.implementation = implementation;
