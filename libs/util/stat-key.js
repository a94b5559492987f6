// The one rule for "is this file as it was?", shared by every memo keyed on file stats (content ids, the Nx
// runtime inputs' memos and shell scripts, the record of written output folders). Plain JavaScript: the runtime
// inputs load it without a transpiler.
//
// - The key is size, mtime and ctime to the nanosecond, inode and device. mtime can be set back (`cp -p`,
//   `touch -d`); ctime cannot, so a file replaced or edited in place and re-dated still changes the key.
// - Racy: a timestamp within RACY_NS of the moment the stats were taken may be shared by a later write in the
//   same clock tick (same size, same stamp): such a record is never trusted later (as git's index does).
// - Changed while read: stats taken before and after reading must be equal, or the read is not of one file.
'use strict';
const { chmodSync, closeSync, openSync, readdirSync, statSync, unlinkSync } = require('node:fs');
const { stat } = require('node:fs/promises');
const { randomBytes } = require('node:crypto');
const { dirname, join } = require('node:path');

// Coarse filesystems stamp whole seconds (ext3, HFS+); ext4, xfs and tmpfs stamp from a clock that ticks in ms.
const RACY_NS = 1_000_000_000n;

/** Wall-clock time in ns, the clock file timestamps come from. */
const nowNs = () => BigInt(Date.now()) * 1_000_000n;

/** `size:mtimeNs:ctimeNs:ino:dev` of bigint stats. */
const statKey = (st) => `${st.size}:${st.mtimeNs}:${st.ctimeNs}:${st.ino}:${st.dev}`;

/** The key of a file (symlinks followed), or null when it is absent or not a file. */
function fileKey(p) {
  try {
    const st = statSync(p, { bigint: true });
    return st.isFile() ? statKey(st) : null;
  } catch {
    return null;
  }
}

/** Whether stats taken at `atNs` (or a key holding them) must not be trusted later: mtime or ctime within RACY_NS of then, or after. */
function isRacy(st, atNs) {
  let m = st.mtimeNs;
  let c = st.ctimeNs;
  if (typeof st === 'string') [m, c] = st.split(':').slice(1, 3).map(BigInt);
  return m >= atNs - RACY_NS || c >= atNs - RACY_NS;
}

/**
 * `read(file)` of a file that did not change while it was read: stats before and after must be the same key,
 * else it is read again (at most `tries` times). Returns { value, key, racy } or null when it kept changing.
 */
async function readStable(file, read, tries = 3) {
  for (let i = 0; i < tries; i++) {
    const at = nowNs();
    const before = await stat(file, { bigint: true });
    const value = await read(file);
    const after = await stat(file, { bigint: true });
    if (statKey(before) === statKey(after)) return { value, key: statKey(before), racy: isRacy(before, at) };
  }
  return null;
}

/** Blocks until `ns` (wall clock); for the few synchronous callers that must wait out the racy window. */
function sleepUntil(ns) {
  const ms = Number((ns - nowNs()) / 1_000_000n) + 1;
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * The key of a file to record now and trust later: a racy file is given the racy window to pass and stat again;
 * if it changed meanwhile, something else is writing it, and 'changed' is returned (never equal to a key).
 * `fineDev()`: the device of a file system whose ctime moves with every change made after a stat (fineCtime):
 * there the stat taken now is enough, and nothing waits. Asked only for a racy file.
 */
function settledKey(p, fineDev) {
  const at = nowNs();
  let st;
  try {
    st = statSync(p, { bigint: true });
  } catch {
    return null;
  }
  if (!st.isFile()) return null;
  if (!isRacy(st, at)) return statKey(st);
  const dev = fineDev?.();
  if (dev !== undefined && dev === st.dev) return statKey(st);
  const latest = st.mtimeNs > st.ctimeNs ? st.mtimeNs : st.ctimeNs;
  // Past one tick of the file system's clock, a later write cannot keep these stats. Timestamps with sub-second
  // digits come from a clock that ticks in at most ~10 ms (ext4, xfs, tmpfs): 50 ms is enough, where whole
  // seconds (ext3, HFS+) need the full window. A write then waits ~50 ms to record, not a second.
  const sec = 1_000_000_000n;
  const tick = st.mtimeNs % sec === 0n && st.ctimeNs % sec === 0n ? RACY_NS : 50_000_000n;
  // Past the file's own last tick, not this look's: files recorded one after another then wait once, not each.
  // (Through the exports, so that a test can count the waits.)
  module.exports.sleepUntil(latest + tick);
  return fileKey(p) === statKey(st) ? statKey(st) : 'changed';
}

/**
 * Whether the file system holding `file` gives every change made after a stat a ctime of its own, newer than
 * the one that stat saw: Linux 6.13+ multigrain timestamps (ext4, xfs, btrfs, tmpfs) stamp the first change
 * after a ctime was read from a fine clock. Then a record taken right after a write cannot be matched by a later
 * write in the same tick, and needs no wait. Probed on `file`, which must be ours (its ctime is touched: chmod
 * to its own mode) in changes made one right after another, each after a stat: a fine clock moves ctime by
 * more than 0 and well under a millisecond, a coarse one by 0 or by a whole tick (at least 1 ms). Three such
 * moves are needed (a change delayed past 0.5 ms is tried again, up to six changes; one that does not move
 * ends the probe). Returns the file system's device, or undefined.
 */
function fineCtime(file) {
  try {
    let last = statSync(file, { bigint: true });
    if (!last.isFile()) return undefined;
    const mode = Number(last.mode & 0o7777n);
    chmodSync(file, mode); // the first change: its ctime is the one the next moves are measured from
    last = statSync(file, { bigint: true });
    let fine = 0;
    for (let i = 0; i < 6 && fine < 3; i++) {
      chmodSync(file, mode);
      const now = statSync(file, { bigint: true });
      const moved = now.ctimeNs - last.ctimeNs;
      if (moved <= 0n || now.ino !== last.ino) return undefined;
      if (moved < 500_000n) fine++;
      last = now;
    }
    return fine === 3 ? last.dev : undefined;
  } catch {
    return undefined;
  }
}

/**
 * fineCtime of the file system holding folder `dir`, probed on a scratch file made there (exclusively, under a
 * name of its own) and removed after, so that no file of the folder is touched: a recorded file whose ctime the
 * probe moved would be racy again for the next record, and the no-op memo would never vouch for it.
 */
function fineCtimeIn(dir) {
  const scratch = join(dir, `.moe-forge-clock-${process.pid}-${randomBytes(6).toString('hex')}`);
  try {
    closeSync(openSync(scratch, 'wx', 0o600));
  } catch {
    return undefined; // a folder we cannot write in: the window is waited out
  }
  try {
    return fineCtime(scratch);
  } finally {
    try {
      unlinkSync(scratch);
    } catch {
      // gone already
    }
  }
}

/**
 * { name: key } of files of a folder just written, to tell later whether each is as written (settledKey).
 * `probe`: whether the file system may be probed (fineCtimeIn, a scratch file beside the folder: where we write
 * the folder's temporaries anyway), once and only when a file is racy, to learn whether it needs the wait.
 */
function recordKeys(dir, names, probe) {
  let fine = null;
  const fineDev = () => {
    if (fine === null) fine = { dev: probe ? fineCtimeIn(dirname(dir)) : undefined };
    return fine.dev;
  };
  const files = {};
  for (const n of names) {
    const key = settledKey(join(dir, n), fineDev);
    if (key) files[n] = key;
  }
  return files;
}

/**
 * A folder as this rule sees it at `atNs`: its names, sorted, the key of each plain file (symlinks followed; a
 * sub-folder's contents are not looked at) and whether one of them is racy. Null when it cannot be listed.
 */
function folderKeys(dir, atNs) {
  let names;
  try {
    names = readdirSync(dir).sort();
  } catch {
    return null;
  }
  const files = {};
  let racy = false;
  for (const n of names) {
    const key = fileKey(join(dir, n));
    if (key === null) continue;
    files[n] = key;
    if (isRacy(key, atNs)) racy = true;
  }
  return { names, files, racy };
}

/** Names of recorded files (recordKeys) that are missing or whose key changed since: never to be kept as written. */
function changedSince(dir, files) {
  return Object.entries(files)
    .filter(([name, was]) => fileKey(join(dir, name)) !== was)
    .map(([name]) => name);
}

module.exports = { RACY_NS, nowNs, statKey, fileKey, isRacy, readStable, settledKey, fineCtime, fineCtimeIn, sleepUntil, recordKeys, changedSince, folderKeys };
