module.exports = require('../load')('embed-prompts');
