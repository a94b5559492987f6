'use strict';
// The executor built at install (build/executors/fetch.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/fetch.js');
