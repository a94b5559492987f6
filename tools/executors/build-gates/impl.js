'use strict';
// The executor built at install (build/executors/build-gates.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/build-gates.js');
