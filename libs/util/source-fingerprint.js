// Which bundle matches the sources: a short hash of every source file's path, size and mtime under some folders.
// Plain JavaScript, shared by bin/bundle.js and tools/executors/load.js, which run before any TypeScript loads.
'use strict';
const { readdirSync, statSync } = require('node:fs');
const { createHash } = require('node:crypto');
const { join } = require('node:path');

module.exports = function sourceFingerprint(dirs, extensions) {
  const h = createHash('sha256');
  const walk = (dir) => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (extensions.some((e) => name.endsWith(e))) h.update(`${p}\0${st.size}\0${st.mtimeMs}\0`);
    }
  };
  dirs.forEach(walk);
  return h.digest('hex').slice(0, 16);
};
