export { computePromptStates, computePadStates, computeAllHiddenStates } from './run';
export type { ForwardOptions, ForwardProgress, LayerState } from './run';
export { availableBackends, executionProviders, DEVICES } from './backend';
export type { Device } from './backend';
export { ropeInvFreq, ropeTables, attentionMask } from './rope';
export { buildLayerModel, planLayerTensors } from './layer-graph';
export { encodeModel } from './onnx-proto';
export { computePromptStatesIsolated, computePadStatesIsolated, computeRouterLogitsIsolated } from './isolated';
export { computeRouterLogits, type MoeModel, type RouterLogits } from './moe';
