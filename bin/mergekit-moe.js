#!/usr/bin/env node
'use strict';
// Runs the command from build/cli.js, built at install (scripts/build.mjs); nothing is compiled here.
let cli;
try {
  cli = require('./built').built('cli.js');
} catch (e) {
  process.stderr.write(`error: ${String(e instanceof Error ? e.message : e).split('\n')[0]}\n`);
  process.exit(1);
}
cli.main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
