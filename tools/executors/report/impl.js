'use strict';
// The executor built at install (build/executors/report.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/report.js');
