#!/usr/bin/env node
'use strict';
// Runs the command from build/cli.js, built at install (scripts/build.mjs); nothing is compiled here.
const argv = process.argv.slice(2);

/**
 * An unchanged re-run is answered from the memo of the last one (build/noop.js, libs/cli/noop-memo.ts) before the
 * merge's code loads; verbose runs, help, version, reports and --watch always run the command.
 * @returns {boolean} whether it answered
 */
function answeredFromMemo() {
  if (argv.some((a) => a === '--verbose' || /^-v+$/.test(a) || a === '--help' || a === '-h' || a === '--version' || a.startsWith('--report') || a === '--watch')) return false;
  let hit = null;
  try {
    const noop = require('./built').built('noop.js');
    hit = noop.checkNoop(noop.memoFile(argv));
  } catch {
    return false; // the command below says what is wrong
  }
  if (!hit) return false;
  for (const w of hit.warnings) process.stderr.write(w + '\n');
  process.stdout.write(hit.line + '\n');
  return true;
}

if (!answeredFromMemo()) {
  // The forward worker forked before the merge's code loads, when the recipe may need it (build/early.js,
  // libs/cli/early-worker.ts): the merge adopts it or ends it, and it is ended here if the command stopped first.
  let early = null;
  try {
    early = require('./built').built('early.js');
    early.startEarly(argv);
  } catch {
    early = null; // only a head start: the merge forks its own
  }
  let cli;
  try {
    cli = require('./built').built('cli.js');
  } catch (e) {
    process.stderr.write(`error: ${String(e instanceof Error ? e.message : e).split('\n')[0]}\n`);
    process.exit(1);
  }
  cli.main(argv).then((code) => {
    process.exitCode = code;
    early?.stopEarly();
    require('./built').exitWhenIdle();
  });
}
