'use strict';
// The executor built at install (build/executors/assemble-experts.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/assemble-experts.js');
