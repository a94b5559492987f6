'use strict';
// The executor built at install (build/executors/write.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/write.js');
