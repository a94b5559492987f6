// Which bundle matches the sources: a short hash of every source file's path and stat key (size, mtime, ctime,
// inode, device: stat-key.js, so a source replaced with `cp -p` is seen) under some folders.
// Plain JavaScript, shared by bin/bundle.js and tools/executors/load.js, which run before any TypeScript loads.
'use strict';
const { readdirSync, statSync } = require('node:fs');
const { createHash } = require('node:crypto');
const { join } = require('node:path');
const { statKey } = require('./stat-key');

module.exports = function sourceFingerprint(dirs, extensions) {
  const h = createHash('sha256');
  const walk = (dir) => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      const st = statSync(p, { bigint: true });
      if (st.isDirectory()) walk(p);
      else if (extensions.some((e) => name.endsWith(e))) h.update(`${p}\0${statKey(st)}\0`);
    }
  };
  dirs.forEach(walk);
  return h.digest('hex').slice(0, 16);
};
