module.exports = require('../load')('assemble-experts');
