'use strict';
module.exports = require('../load')('check-options');
