// nx.json's plugin entry, kept in JavaScript: given a .ts file, Nx registers a TypeScript transpiler in its plugin
// worker (about 1 s on every command). The plugin is index.ts, built at install into build/plugin.js.
'use strict';
module.exports = require('../../bin/built').built('plugin.js');
