/** An executor's log (tools/executors/log.ts): results tagged with their stage; progress erased on a terminal, its last state a note. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { beginTask, logger, takeNotes, taskProgress } from '../../tools/executors/log';

function stream(tty: boolean): { s: NodeJS.WriteStream; text: () => string } {
  const p = new PassThrough();
  let text = '';
  p.on('data', (d: Buffer) => (text += d.toString()));
  return { s: Object.assign(p, { isTTY: tty }) as unknown as NodeJS.WriteStream, text: () => text };
}

test('on a terminal the bar is drawn in place and erased at the end: what Nx stores ends blank; the last state is a note with its time', async () => {
  const ci = process.env.CI;
  delete process.env.CI;
  try {
    beginTask('write');
    const { s, text } = stream(true);
    const p = taskProgress('writing', s);
    p.update(1, 2, '1/2 kB');
    p.update(2, 2, '2/2 kB');
    p.end();
    await new Promise((r) => setImmediate(r));
    assert.match(text(), /^\rwriting \[#{12}\.{12}\] 1\/2 kB\x1b\[K\rwriting \[#{24}\] 2\/2 kB\x1b\[K\r\x1b\[2K$/);
    assert.deepEqual(takeNotes().map((l) => l.replace(/\(\d+\.\d s\)/, '(T)')), ['writing: 2/2 kB (T)']);
  } finally {
    if (ci !== undefined) process.env.CI = ci;
  }
});

test('off a terminal progress prints nothing (it would be replayed on every cache hit): the note says it once', async () => {
  beginTask('write');
  const { s, text } = stream(false);
  const p = taskProgress('writing', s);
  p.update(2, 2, '2/2 kB');
  p.end();
  await new Promise((r) => setImmediate(r));
  assert.equal(text(), '');
  assert.equal(takeNotes().length, 1);
});

test('results are tagged with their stage, notes are not printed, and debug lines are notes only with --verbose', () => {
  const lines: string[] = [];
  const log = console.log;
  console.log = (s: string) => lines.push(s);
  const verbose = process.env.NX_VERBOSE_LOGGING;
  try {
    beginTask('assemble-experts');
    logger.info('29 tensors planned\nsecond line');
    logger.run('why it ran');
    delete process.env.NX_VERBOSE_LOGGING;
    logger.debug('not kept');
    process.env.NX_VERBOSE_LOGGING = 'true';
    logger.debug('kept');
  } finally {
    console.log = log;
    if (verbose === undefined) delete process.env.NX_VERBOSE_LOGGING;
    else process.env.NX_VERBOSE_LOGGING = verbose;
  }
  assert.deepEqual(lines, ['[assemble-experts] 29 tensors planned\n[assemble-experts] second line']);
  assert.deepEqual(takeNotes(), ['why it ran', 'debug: kept']);
});
