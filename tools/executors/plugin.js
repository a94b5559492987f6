// The Nx plugin's entry in nx.json: plain JavaScript, so that Nx registers no TypeScript transpiler in its plugin
// worker (that cost ~1 s on every command); index.ts is loaded as one esbuild bundle, rebuilt when a source changes.
'use strict';
module.exports = require('./load')('plugin', require('node:path').join(__dirname, 'index.ts'));
