'use strict';
module.exports = require('../load')('stage-batch');
