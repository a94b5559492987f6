#!/usr/bin/env node
// The sources are TypeScript; tsx compiles them on load so the command runs from a plain checkout.
require('tsx/cjs');
require('../libs/cli/mergekit-moe.ts')
  .main(process.argv.slice(2))
  .then((code) => { process.exitCode = code; });
