import { readFileSync, rmSync } from 'node:fs';
import type { ExecutorContext } from '@nx/devkit';
import { describeError } from '../../../libs/errors';
import { invocation, notesFile, type TaskNotes } from '../log';
import { checkStageOptions } from '../options';

function readNotes(file: string): TaskNotes | null {
  try {
    const n = JSON.parse(readFileSync(file, 'utf8')) as Partial<TaskNotes> | null;
    if (n && n.v === 1 && typeof n.invocation === 'string' && Array.isArray(n.lines) && n.lines.every((l) => typeof l === 'string')) return n as TaskNotes;
  } catch {
    // none
  }
  return null;
}

/** This build's targets of `project` (other than `self`), each after the targets it depends on. */
function stageOrder(context: ExecutorContext, project: string, self: string | undefined): string[] {
  const graph = context.taskGraph;
  if (!graph) return [];
  const ids = Object.keys(graph.tasks).filter((id) => graph.tasks[id]!.target.project === project && graph.tasks[id]!.target.target !== self);
  // Nx 24 lists a task's dependencies as { id } objects (older versions: ids).
  const deps = (id: string) => (graph.dependencies[id] ?? []).map((d: unknown) => (typeof d === 'string' ? d : (d as { id: string }).id)).filter((d) => ids.includes(d));
  const order: string[] = [];
  while (order.length < ids.length) {
    const next = ids.find((id) => !order.includes(id) && deps(id).every((d) => order.includes(d)));
    if (next === undefined) break; // a cycle: Nx would not have run it
    order.push(next);
  }
  return order.map((id) => graph.tasks[id]!.target.target);
}

/**
 * The build target: Nx has checked the options against stage-options.json; what a JSON schema cannot say is
 * checked here, with the command's messages. Nx never caches this target, so what it prints is true of this
 * run: which stages ran and which Nx restored, and the notes of those that ran (why, how long, --verbose's
 * details), which the stages keep out of their own output because Nx replays that on every cache hit.
 */
export default async function buildSummary(options: unknown, context: ExecutorContext): Promise<{ success: boolean }> {
  try {
    checkStageOptions(options);
  } catch (e) {
    console.error(`error: ${describeError(e)}`);
    return { success: false };
  }
  const project = context.projectName!;
  const self = context.targetName;
  const me = invocation();
  const ran: string[] = [];
  const restored: string[] = [];
  const lines: string[] = [];
  for (const target of stageOrder(context, project, self)) {
    const file = notesFile(context.root, project, target);
    const notes = readNotes(file);
    if (notes && notes.invocation === me) {
      ran.push(target);
      for (const l of notes.lines) lines.push(`[${target}] ${l}`);
      rmSync(file, { force: true });
    } else restored.push(target);
  }
  if (ran.length === 0) console.log(`nothing ran: ${restored.length ? `${restored.join(', ')} restored from Nx's cache` : 'no stage in this build'}`);
  else console.log(`ran: ${ran.join(', ')}${restored.length ? `; restored from Nx's cache: ${restored.join(', ')}` : ''}`);
  for (const l of lines) console.log(l);
  return { success: true };
}
