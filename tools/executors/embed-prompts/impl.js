'use strict';
// The executor built at install (build/executors/embed-prompts.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/embed-prompts.js');
