export * from './types';
export { buildReport, softmax, topK, winner, cosine, rangesOf, PARALLEL_COSINE, CANCEL_RATIO, DEGENERATE_CONDITION, type ReportInput } from './routing';
export { renderHtml, esc } from './html';
export { parseEvalPrompts, type EvalPrompt } from './eval-prompts';
export { measureRouting, loadFigures, SAME_ROW_COSINE, STARVING_LOAD, type MeasureInput } from './measured';
export { routingAdvice } from './advice';
export { layerRanges } from './layers';
export * from './measured';
