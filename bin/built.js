// Loads a module from build/ (scripts/build.mjs, run by `npm ci`, `npm test` and `npm run build`). In a checkout,
// the build must match the sources by content (build/manifest.json): a stale one would run code that is not the
// code Nx hashes, so it is refused with the fix, never rebuilt here (no bundling at run time, and no race between
// the processes Nx runs in parallel). An installed package ships no sources: nothing to compare.
'use strict';
const { createHash } = require('node:crypto');
const { existsSync, readFileSync } = require('node:fs');
const { join, resolve } = require('node:path');

const ROOT = resolve(__dirname, '..');
let checked = false;

/** The first source that differs from what build/ was built from, or null. */
function staleSource(root = ROOT) {
  let manifest;
  try {
    manifest = JSON.parse(readFileSync(join(root, 'build', 'manifest.json'), 'utf8'));
  } catch {
    return 'build/manifest.json is missing';
  }
  for (const [rel, hash] of Object.entries(manifest.sources)) {
    let text;
    try {
      text = readFileSync(join(root, rel));
    } catch {
      return `${rel} is gone`;
    }
    if (createHash('sha256').update(text).digest('hex') !== hash) return `${rel} changed`;
  }
  return null;
}

/** `require(build/<rel>)`; throws one line when the checkout's sources moved on since the build. */
function built(rel) {
  // A checkout (libs/ beside bin/); a package installed from its tarball has no sources to compare with.
  if (!checked && existsSync(join(ROOT, 'libs'))) {
    const why = staleSource();
    if (why) throw new Error(`moe-forge: build/ is out of date (${why}): run npm run build`);
    checked = true;
  }
  const mod = require(join(ROOT, 'build', rel));
  return mod.default ?? mod;
}

module.exports = { built, staleSource };
