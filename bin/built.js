// Loads a module from build/ (scripts/build.mjs, run by `npm ci`, `npm test` and `npm run build`). In a checkout,
// the build must match the sources by content (build/manifest.json; a source whose stat key is the one the build
// recorded is not read again): a stale one would run code that is not the
// code Nx hashes, so it is refused with the fix, never rebuilt here (no bundling at run time, and no race between
// the processes Nx runs in parallel). An installed package ships no sources: nothing to compare.
'use strict';
const { createHash } = require('node:crypto');
const { existsSync, fstatSync, readFileSync, statSync } = require('node:fs');
const { dirname, join, resolve } = require('node:path');

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
      // The stat key the build saw (recorded only for a file settled before the build read it): unchanged since.
      const st = manifest.stats?.[rel] !== undefined ? statSync(join(root, rel), { bigint: true }) : null;
      if (st && manifest.stats[rel] === `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`) continue;
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
  const mod = loadBuilt(join(ROOT, 'build', rel));
  return mod.default ?? mod;
}

/** How each file loadBuilt loaded was compiled: 'cache' (V8 took its code cache), 'rejected' (V8 refused it), 'none'. */
const codeCache = new Map();

/**
 * `require(file)`, with V8's code cache of it where the build made one (`<file>.v8cache`, scripts/code-cache.mjs,
 * headed by the sha256 of the file it was made from and that of its data: any other file, or damaged data, loads
 * without it). V8 checks the rest (its version, its flags) and compiles afresh when it refuses it.
 */
function loadBuilt(file) {
  if (require.cache[file]) return require.cache[file].exports;
  let cache;
  try {
    cache = readFileSync(`${file}.v8cache`);
  } catch {
    codeCache.set(file, 'none');
    return require(file);
  }
  const bytes = readFileSync(file);
  const sha = (b) => createHash('sha256').update(b).digest();
  const data = cache.subarray(64);
  // Made from these bytes, and whole: V8 checks its version and flags, not its data (damaged data could crash it).
  if (cache.length <= 64 || !cache.subarray(0, 32).equals(sha(bytes)) || !cache.subarray(32, 64).equals(sha(data))) {
    codeCache.set(file, 'none');
    return require(file);
  }
  const vm = require('node:vm');
  const { Module, createRequire } = require('node:module');
  const script = new vm.Script(Module.wrap(bytes.toString('utf8')), { filename: file, cachedData: data, importModuleDynamically: vm.constants?.USE_MAIN_CONTEXT_DEFAULT_LOADER });
  // Registered as require would (a later require of it gets this instance); its own requires resolve from its folder.
  const m = new Module(file);
  m.filename = file;
  require.cache[file] = m;
  try {
    script.runInThisContext()(m.exports, createRequire(file), m, file, dirname(file));
  } catch (e) {
    delete require.cache[file];
    throw e;
  }
  m.loaded = true;
  codeCache.set(file, script.cachedDataRejected ? 'rejected' : 'cache');
  return m.exports;
}

/**
 * Whether a finished command has nothing of its own left to run: among the open resources
 * (process.getActiveResourcesInfo()) none but stdout's and stderr's handles (`stdioHandles` of them are pipes or
 * terminals), and nothing of theirs left to write.
 * @param {string[]} open
 * @param {number} stdioHandles
 * @param {number} unwritten
 */
function idle(open, stdioHandles, unwritten) {
  return unwritten === 0 && open.length <= stdioHandles && open.every((r) => r === 'PipeWrap' || r === 'TTYWrap');
}

/**
 * Ends a finished command's process now where it is idle: exiting skips tearing down V8's heap page by page, which
 * took a merge's command 30-35 ms after its last line (20-25 so). Anything else still open keeps the natural exit.
 */
function exitWhenIdle() {
  setImmediate(() => {
    const stdio = [1, 2].filter((fd) => {
      try {
        const s = fstatSync(fd);
        return s.isFIFO() || s.isSocket() || s.isCharacterDevice();
      } catch {
        return false;
      }
    }).length;
    if (idle(process.getActiveResourcesInfo(), stdio, process.stdout.writableLength + process.stderr.writableLength)) process.exit();
  });
}

module.exports = { built, staleSource, loadBuilt, codeCache, idle, exitWhenIdle };
