#!/usr/bin/env node
// Nx runtime input of each recipe's fetch target: prints the content ids of the recipe's models.
'use strict';
require('./load')('model-ids')(process.argv.slice(2)).then(
  (text) => process.stdout.write(text),
  (e) => {
    // Hashing must not fail on a bad recipe: the fetch stage reports it properly.
    process.stdout.write(`unresolved: ${e && e.message}\n`);
  },
);
