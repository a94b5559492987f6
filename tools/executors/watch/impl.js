'use strict';
// The executor built at install (build/executors/watch.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/watch.js');
