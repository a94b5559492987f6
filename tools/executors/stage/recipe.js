'use strict';
// The executor built at install (build/executors/recipe-stage.js), through the one loader (bin/built.js).
module.exports = require('../../../bin/built').built('executors/recipe-stage.js');
