module.exports = require('../load')('report');
