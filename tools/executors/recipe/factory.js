'use strict';
// The recipe generator from build/ (generator.ts, built at install): Nx needs no TypeScript transpiler for it.
module.exports = require('../../../bin/built').built('recipe-generator.js');
