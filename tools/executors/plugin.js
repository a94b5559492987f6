// The Nx plugin's entry in nx.json: plain JavaScript over build/plugin.js (built from index.ts at install), so that
// Nx registers no TypeScript transpiler in its plugin worker (that cost ~1 s on every command).
'use strict';
module.exports = require('./load')('plugin.js');
