// An executor (or the plugin, or the generator) from build/, built at install by scripts/build.mjs; refused with
// the fix when the checkout's sources changed since (bin/built.js). Nothing is bundled or compiled here.
'use strict';
const { built } = require('../../bin/built');

module.exports = function load(name) {
  return built(name.includes('/') || name.includes('.') ? name : `executors/${name}.js`);
};
