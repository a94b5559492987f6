module.exports = require('../load')('build-gates');
