export { computePromptStates, computePadStates, computeAllHiddenStates, computeRouterInputs } from './run';
export type { ForwardOptions, ForwardProgress, LayerState } from './run';
export { availableBackends, executionProviders, DEVICES } from './backend';
export type { Device } from './backend';
export { ropeInvFreq, ropeTables, attentionMask } from './rope';
export { buildLayerModel, planLayerTensors } from './layer-graph';
export { encodeModel } from './onnx-proto';
export { computePromptStatesIsolated, computePadStatesIsolated, computeRouterInputsIsolated } from './isolated';
