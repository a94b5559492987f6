// Nx batch mode: the stages of a batch (a recipe's chain, or one stage of many recipes) run one after another in
// this one process instead of one process each (~0.3 s of node and Nx start per stage on an idle 2-core machine).
// Each task's log is captured and handed to Nx as that task's output, so it prints and is cached as in a normal run.
'use strict';
const { implementation, stageOf } = require('./impl');

// Nx 24 lists a task's dependencies as { id } objects (older versions: ids).
const depIds = (taskGraph, id) => (taskGraph.dependencies[id] ?? []).map((d) => (typeof d === 'string' ? d : d.id));

/** Task ids in an order where each comes after the tasks of this batch it depends on. */
function ordered(taskGraph) {
  const ids = Object.keys(taskGraph.tasks);
  const done = new Set();
  const order = [];
  while (order.length < ids.length) {
    const next = ids.find((id) => !done.has(id) && depIds(taskGraph, id).every((d) => done.has(d) || !(d in taskGraph.tasks)));
    if (next === undefined) throw new Error(`moe-forge: the batch's tasks depend on each other in a cycle: ${ids.filter((id) => !done.has(id)).join(', ')}`);
    done.add(next);
    order.push(next);
  }
  return order;
}

/** Runs `fn` with everything written to stdout and stderr captured (and kept off the worker's own streams). */
async function captured(fn) {
  let text = '';
  const out = process.stdout.write;
  const err = process.stderr.write;
  const capture = (chunk, encoding, cb) => {
    text += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString(typeof encoding === 'string' ? encoding : 'utf8');
    const done = typeof encoding === 'function' ? encoding : cb;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  };
  process.stdout.write = capture;
  process.stderr.write = capture;
  try {
    const result = await fn();
    return { result, text };
  } catch (e) {
    return { result: { success: false }, text: `${text}${e && e.stack ? e.stack : String(e)}\n` };
  } finally {
    process.stdout.write = out;
    process.stderr.write = err;
  }
}

module.exports = async function* stageBatch(taskGraph, inputs, _overrides, context) {
  const failed = new Set();
  for (const id of ordered(taskGraph)) {
    const task = taskGraph.tasks[id];
    const startTime = Date.now();
    // As Nx does outside a batch: a task whose dependency failed does not run.
    if (depIds(taskGraph, id).some((d) => failed.has(d))) {
      failed.add(id);
      yield { task: id, result: { success: false, status: 'skipped', terminalOutput: '', startTime, endTime: startTime } };
      continue;
    }
    const { project, target, configuration } = task.target;
    const { result, text } = await captured(() =>
      implementation(stageOf(context, project, target))(inputs[id], { ...context, projectName: project, targetName: target, configurationName: configuration }),
    );
    const success = !!(result && result.success);
    if (!success) failed.add(id);
    yield { task: id, result: { success, terminalOutput: text, startTime, endTime: Date.now() } };
  }
};
