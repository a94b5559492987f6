// The write target's runtime input (run as build/runtime/output-state.js, a small bundle of this file and what it
// imports), and the record the write executor keeps. Nx runs it on every build.
//
// Nx hashes a task before it runs, so an input that described the model folder would differ before and after
// the write that creates it, and a no-op build would never be a cache hit. Instead this prints a token that
// stands for "every model folder this workspace recorded is as it was written":
// - a write into a folder with no live record (first build, a folder deleted or edited) keeps the token, so
//   the cache entry it stores is hit by the next, untouched build;
// - a folder found deleted or edited (the stat key of a file it was written with, libs/util/stat-key.js: size,
//   mtime, ctime, inode, device; a re-dated edit changes ctime) rotates the token:
//   every entry stored under the old one is dead, so the next build writes again;
// - a write that replaces a live folder's content (an edited recipe) rotates it too, or going back to the old
//   recipe would hit the old entry over the new content; the build after such a write runs write once more
//   (it finds the folder complete and writes nothing) before no-op builds are cache hits again.
// The record lives in the workspace's .nx folder, never in a cache: a random token per workspace means another
// machine never skips its own write on a remote-cache hit. The output folders are never Nx outputs.
// The answer is also left as a shell script (fast-input.ts) that the next builds run instead of node while the
// record, the live folders' files, models.json (its bytes) and the companion files are as they were.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { contentsUnchanged, recordAnswer, snapshot, withContent, type Snapshot } from './fast-input';
import { changedSince, recordKeys } from '../../libs/util';

/** One model folder this workspace wrote: its files' stat keys, and the token its write stood under. */
interface OutputRecord {
  dir: string;
  token: string | null;
  files: Record<string, string>;
}

interface OutputState {
  token: string | null;
  outputs: Record<string, OutputRecord>;
}

const COMPANIONS = ['chat_template.jinja', 'chat_template.json', 'generation_config.json'];
const KIND = 'output-state';

export function stateFile(root: string, project: string): string {
  return join(root, '.nx', 'moe-forge', 'outputs', `${project.replace(/[^\w.-]/g, '_')}.json`);
}

const isRecord = (r: unknown): r is OutputRecord => {
  const o = r as Partial<OutputRecord> | null;
  return !!o && typeof o.dir === 'string' && (o.token === null || typeof o.token === 'string') && !!o.files && typeof o.files === 'object' && Object.values(o.files).every((k) => typeof k === 'string');
};

function readState(root: string, project: string): OutputState {
  try {
    const s = JSON.parse(readFileSync(stateFile(root, project), 'utf8')) as { v?: unknown; token?: unknown; outputs?: unknown } | null;
    // v2: files recorded by stat key. An older record (size, mtime, inode), or one not of this shape, is no record: write runs once.
    if (s && s.v === 2 && typeof s.token === 'string' && s.outputs && typeof s.outputs === 'object' && Object.values(s.outputs).every(isRecord)) {
      return { token: s.token, outputs: s.outputs as Record<string, OutputRecord> };
    }
  } catch {
    // absent or unreadable: a new token (every cache entry of write misses once)
  }
  return { token: null, outputs: {} };
}

function saveState(root: string, project: string, state: OutputState): void {
  const file = stateFile(root, project);
  mkdirSync(join(file, '..'), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ v: 2, ...state }, null, 1) + '\n');
  renameSync(tmp, file);
}

const newToken = () => randomBytes(12).toString('hex');

/** The token for the write target's hash (rotated when a live folder is found changed). */
export function currentToken(root: string, project: string): string {
  const state = readState(root, project);
  let rotate = state.token === null;
  for (const rec of Object.values(state.outputs)) {
    if (rec.token === state.token && changedSince(rec.dir, rec.files).length > 0) {
      rec.token = null;
      rotate = true;
    }
  }
  if (rotate) {
    const t = newToken();
    for (const rec of Object.values(state.outputs)) if (rec.token === state.token && rec.token !== null) rec.token = t;
    state.token = t;
    saveState(root, project, state);
    return t;
  }
  return state.token!;
}

/** Files of the folder at `dir` that changed since this workspace wrote it ([] when it has no record). */
export function suspectFiles(root: string, project: string, dir: string): string[] {
  const rec = readState(root, project).outputs[dir];
  return rec ? changedSince(dir, rec.files) : [];
}

/**
 * After a successful write: record the folder's files; rotate the token when live content was replaced. `probe`:
 * the file system may be probed for its clock (recordKeys).
 */
export function recordWrite(root: string, project: string, dir: string, names: string[], replaced: boolean, probe?: boolean): void {
  const state = readState(root, project);
  const prev = state.outputs[dir];
  if (state.token === null || (replaced && prev && prev.token === state.token)) {
    const t = newToken();
    for (const rec of Object.values(state.outputs)) if (rec.token === state.token && rec.token !== null) rec.token = t;
    state.token = t;
  }
  // Just written, so most files are racy: unless the file system stamps every later change apart (probed with a
  // scratch file beside the folder), the window is waited out once, so that the next build can trust the record; a file that changes
  // meanwhile is recorded as changed.
  state.outputs[dir] = { dir, token: state.token, files: recordKeys(dir, names, probe) };
  saveState(root, project, state);
}

const modelsJson = (root: string, stagesDir: string) => resolve(root, stagesDir, 'fetch', 'models.json');

/** Local model folders fetch resolved (Hub snapshots are fixed by their commit, in models.json). */
function localModelDirs(root: string, stagesDir: string): { ref: string; dir: string }[] {
  let models: unknown;
  try {
    models = (JSON.parse(readFileSync(modelsJson(root, stagesDir), 'utf8')) as { models?: unknown } | null)?.models;
  } catch {
    return [];
  }
  const dirs = [];
  for (const m of (Array.isArray(models) ? models : []) as ({ source?: unknown; dir?: unknown } | null)[]) {
    if (!m || m.source !== 'local' || typeof m.dir !== 'string') continue;
    dirs.push({ ref: m.dir, dir: m.dir.startsWith('~/') ? join(homedir(), m.dir.slice(2)) : isAbsolute(m.dir) ? m.dir : resolve(root, m.dir) });
  }
  return dirs;
}

/** Chat template and generation settings of the local models fetch resolved: write copies them, and the models' content ids leave them out. */
function companionLines(root: string, stagesDir: string): string[] {
  const lines: string[] = [];
  for (const { ref, dir } of localModelDirs(root, stagesDir)) {
    for (const f of COMPANIONS) {
      let bytes;
      try {
        bytes = readFileSync(join(dir, f));
      } catch {
        continue;
      }
      lines.push(`companion ${ref} ${f} ${createHash('sha256').update(bytes).digest('hex')}`);
    }
  }
  return [...new Set(lines)];
}

/**
 * What the answer stands on, seen before it is computed: the record and models.json first (the other files are
 * read from them), then the live folders' recorded files and the companion files (present or not). models.json by
 * content: Nx restores it, same bytes and a new ctime, on every cache hit of fetch, before write's input runs.
 */
function answerSnapshot(root: string, project: string, stagesDir: string): Snapshot {
  const first = withContent(snapshot([stateFile(root, project)]), modelsJson(root, stagesDir));
  const state = readState(root, project);
  const rest: string[] = [];
  if (state.token !== null) {
    for (const rec of Object.values(state.outputs)) if (rec.token === state.token) for (const name of Object.keys(rec.files)) rest.push(join(rec.dir, name));
  }
  for (const { dir } of localModelDirs(root, stagesDir)) for (const f of COMPANIONS) rest.push(join(dir, f));
  const then = snapshot(rest);
  return { paths: [...first.paths, ...then.paths], lines: [...first.lines, ...then.lines], racy: first.racy || then.racy, contents: first.contents };
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const [project = '', stagesDir = ''] = args;
  const root = process.cwd();
  const snap = answerSnapshot(root, project, stagesDir);
  const lines = [`write-token ${currentToken(root, project)}`, ...companionLines(root, stagesDir)];
  const text = lines.join('\n') + '\n';
  process.stdout.write(text);
  // A rotated token rewrote the record: stat no longer matches the snapshot, so no script (node answers once more).
  // models.json rewritten with other bytes while the answer was computed: no script either.
  recordAnswer(root, KIND, args, contentsUnchanged(snap) ? snap : { ...snap, racy: true }, text);
}
