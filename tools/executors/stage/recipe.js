'use strict';
module.exports = require('../load')('recipe-stage');
