// Nx has validated the options against stage-options.json before calling this: nothing is left to do.
'use strict';
module.exports = async function checkOptions() {
  return { success: true };
};
