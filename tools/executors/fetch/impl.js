module.exports = require('../load')('fetch');
