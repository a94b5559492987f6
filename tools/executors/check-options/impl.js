'use strict';
// The executor built at install (build/executors/check-options.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/check-options.js');
