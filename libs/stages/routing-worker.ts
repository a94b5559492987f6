// The report's merged-model forward pass in a child process of its own (forked by report.ts through the forward
// library's runIsolatedWorker): it needs the writer's tensor producer (stages), which the forward library's own
// worker must not import (stages imports forward).
import { computeRouterLogits, serveOneRequest, type ForwardOptions } from '../forward';
import type { GateTensor } from '../gates';
import type { MergePlan } from '../plan';
import { mergedModel } from './merged-model';

export interface RoutingRequest {
  plan: MergePlan;
  gates: GateTensor;
  prompts: number[][];
  options: Omit<ForwardOptions, 'onProgress'>;
}

serveOneRequest<RoutingRequest>((req, onProgress) => computeRouterLogits(mergedModel(req.plan, req.gates), req.prompts, { ...req.options, onProgress }));
