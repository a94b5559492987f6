// Nx batch mode: the stages of a batch (a recipe's chain, or one stage of many recipes) run one after another in
// this one process instead of one process each (~0.3 s of node and Nx start per stage on an idle 2-core machine).
// Each task's log is captured and handed to Nx as that task's output, so it prints and is cached as in a normal run.
import type { ExecutorContext, TaskGraph } from '@nx/devkit';
import { runStage } from '../run-stage';
import { stageOf } from './impl';

// Nx 24 lists a task's dependencies as { id } objects (older versions: ids).
const depIds = (taskGraph: TaskGraph, id: string): string[] => ((taskGraph.dependencies[id] ?? []) as (string | { id: string })[]).map((d) => (typeof d === 'string' ? d : d.id));

/** Task ids in an order where each comes after the tasks of this batch it depends on. */
export function ordered(taskGraph: TaskGraph): string[] {
  const ids = Object.keys(taskGraph.tasks);
  const done = new Set<string>();
  const order: string[] = [];
  while (order.length < ids.length) {
    const next = ids.find((id) => !done.has(id) && depIds(taskGraph, id).every((d) => done.has(d) || !(d in taskGraph.tasks)));
    if (next === undefined) throw new Error(`moe-forge: the batch's tasks depend on each other in a cycle: ${ids.filter((id) => !done.has(id)).join(', ')}`);
    done.add(next);
    order.push(next);
  }
  return order;
}

type Write = typeof process.stdout.write;

/** Runs `fn` with everything written to stdout and stderr captured (and kept off the worker's own streams). */
async function captured(fn: () => Promise<{ success: boolean }>): Promise<{ result: { success: boolean }; text: string }> {
  let text = '';
  const out = process.stdout.write;
  const err = process.stderr.write;
  const capture = ((chunk: string | Uint8Array, encoding?: BufferEncoding | ((e?: Error) => void), cb?: (e?: Error) => void) => {
    text += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString(typeof encoding === 'string' ? encoding : 'utf8');
    const done = typeof encoding === 'function' ? encoding : cb;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  }) as Write;
  process.stdout.write = capture;
  process.stderr.write = capture;
  try {
    return { result: await fn(), text };
  } catch (e) {
    return { result: { success: false }, text: `${text}${(e as Error)?.stack ?? String(e)}\n` };
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
  }
}

export default async function* stageBatch(taskGraph: TaskGraph, inputs: Record<string, unknown>, _overrides: unknown, context: ExecutorContext) {
  const failed = new Set<string>();
  for (const id of ordered(taskGraph)) {
    const task = taskGraph.tasks[id]!;
    const startTime = Date.now();
    // As Nx does outside a batch: a task whose dependency failed does not run.
    if (depIds(taskGraph, id).some((d) => failed.has(d))) {
      failed.add(id);
      yield { task: id, result: { success: false, status: 'skipped', terminalOutput: '', startTime, endTime: startTime } };
      continue;
    }
    const { project, target, configuration } = task.target;
    const { result, text } = await captured(async () => runStage(inputs[id], { ...context, projectName: project, targetName: target, configurationName: configuration }, stageOf(context, project, target)));
    const success = !!result?.success;
    if (!success) failed.add(id);
    yield { task: id, result: { success, terminalOutput: text, startTime, endTime: Date.now() } };
  }
}
