#!/usr/bin/env node
'use strict';
// The sources are TypeScript: run them from an esbuild bundle (bin/bundle.js); where none can be built or
// written (a read-only install), tsx compiles them on load, so the command still runs from a plain checkout.
let cli;
try {
  cli = require('./bundle.js').loadCli();
} catch {
  // tsx keeps compiled files in $TMPDIR/tsx-<uid>, outside anything a run may write; the forward worker inherits this.
  process.env.TSX_DISABLE_CACHE = '1';
  require('tsx/cjs');
  cli = require('../libs/cli/mergekit-moe.ts');
}
cli.main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
