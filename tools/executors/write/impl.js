module.exports = require('../load')('write');
