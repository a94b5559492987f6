'use strict';
// The executor built at install (build/executors/build-summary.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/build-summary.js');
