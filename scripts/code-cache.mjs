// V8's code cache of a built bundle (bin/built.js loads the bundle with it): `<file>.v8cache`, the sha256 of the
// bundle it was made from, the sha256 of V8's data (V8 does not check its own data's integrity), then the data.
// Made in a child with Node's default flags (V8 refuses a cache made under other flags), after the bundle's top
// level has run once, so that the functions that run at load are in it.
import { spawnSync } from 'node:child_process';

const MAKE = `
  const { createHash } = require('node:crypto'), fs = require('node:fs'), vm = require('node:vm'), path = require('node:path');
  const { Module, createRequire } = require('node:module');
  const [file, at] = process.argv.slice(1);
  const bytes = fs.readFileSync(file);
  const script = new vm.Script(Module.wrap(bytes.toString('utf8')), { filename: at });
  const m = { exports: {} };
  script.runInThisContext()(m.exports, createRequire(at), m, at, path.dirname(at));
  const data = script.createCachedData();
  const sha = (b) => createHash('sha256').update(b).digest();
  fs.writeFileSync(file + '.v8cache', Buffer.concat([sha(bytes), sha(data), data]));`;

/**
 * Writes `file`.v8cache for `file`, which will be loaded from `at` (its top level runs with `at`'s require).
 * Returns null, or why there is none (the bundle then loads without one).
 */
export function writeCodeCache(file, at = file) {
  const env = { ...process.env };
  delete env.NODE_OPTIONS;
  const r = spawnSync(process.execPath, ['-e', MAKE, file, at], { encoding: 'utf8', env });
  if (r.status === 0) return null;
  return (r.error?.message ?? r.stderr ?? '').trim().split('\n').pop() || `exit ${r.status}`;
}
