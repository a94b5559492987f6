// A shell fast path for the plugin's runtime inputs (model-ids.ts, output-state.ts, built into build/runtime/). Nx runs each runtime input
// on every build; starting node costs ~0.1 s, most of a no-op build's own time. So when node computes an answer,
// it also writes a small sh script that prints that answer again while every file the answer stands on has the
// stats it had (name, size, mtime and ctime to the nanosecond, inode, device, mode, through GNU stat, in one call),
// and exits 1 otherwise; the runtime command runs that script and falls back to node. A script is written only
// when `stat` printed exactly what node saw, so a platform whose stat prints less (BSD, BusyBox without
// nanoseconds) never answers from it, and only when no file was racy when node looked (libs/util/stat-key.js):
// a same-tick edit would keep its stats.
// A file Nx rewrites with the same bytes on every build is checked by content instead (sha256sum), likewise
// only where sha256sum prints what node computed.
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { isRacy, nowNs } from '../../libs/util';

export interface Snapshot {
  paths: string[];
  lines: (string | null)[];
  /** A file changed within the racy window of the snapshot: no answer may stand on it. */
  racy?: boolean;
  /**
   * Files the answer stands on by content (sha256), not by stat: files Nx itself rewrites, same bytes, on every
   * cache hit (a restored output such as fetch's models.json), whose new ctime would otherwise stop the script.
   */
  contents?: { path: string; sha256: string | null }[];
}

/** The runtime inputs, each built from tools/executors/<kind>.ts into build/runtime/<kind>.js. */
export type RuntimeKind = 'model-ids' | 'output-state';

const FORMAT = '%n:%s:%.9Y:%.9Z:%i:%d:%f\\n';

/** Workspace-relative path of the script answering `node build/runtime/<kind>.js <args>`. */
export function scriptPath(kind: string, args: string[]): string {
  const key = createHash('sha256').update([kind, ...args].join('\0')).digest('hex').slice(0, 16);
  return `.nx/moe-forge/fast/${kind}-${key}.sh`;
}

const shellWord = (s: string) => (/^[\w./@%+=:,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** The runtime input's command: the fast script, else node (which writes a new one); plain node on Windows. */
export function runtimeCommand(kind: RuntimeKind, args: string[], platform: NodeJS.Platform = process.platform): string {
  const node = ['node', `build/runtime/${kind}.js`, ...args].map(shellWord).join(' ');
  // The script's stderr (a missing script) must not reach the hash; node's keeps doing so, as before.
  return platform === 'win32' ? node : `sh ${scriptPath(kind, args)} 2>/dev/null || ${node}`;
}

const seconds = (ns: bigint) => `${ns / 1000000000n}.${String(ns % 1000000000n).padStart(9, '0')}`;

/** The line GNU stat prints for bigint stats of `p` with FORMAT. */
function lineOf(p: string, st: BigIntStats): string {
  // Never what stat prints: no fast answer.
  if (st.mtimeNs < 0n || st.ctimeNs < 0n) return `${p}:negative-time`;
  return `${p}:${st.size}:${seconds(st.mtimeNs)}:${seconds(st.ctimeNs)}:${st.ino}:${st.dev}:${st.mode.toString(16)}`;
}

/** The line GNU stat prints for a path with FORMAT, from node's own stat; null when absent (stat prints nothing). */
export function statLine(p: string): string | null {
  try {
    return lineOf(p, statSync(p, { bigint: true }));
  } catch {
    return null;
  }
}

/** What node sees of `paths` now: take it before reading anything the answer is computed from. `racy`: not to be trusted later. */
export function snapshot(paths: string[]): Snapshot {
  const uniq = [...new Set(paths)];
  const at = nowNs();
  let racy = false;
  const lines = uniq.map((p) => {
    try {
      const st = statSync(p, { bigint: true });
      racy ||= isRacy(st, at);
      return lineOf(p, st);
    } catch {
      return null;
    }
  });
  return { paths: uniq, lines, racy };
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** sha256 of a file's bytes, as `sha256sum` prints it; null when it cannot be read. */
export function contentHash(p: string): string | null {
  try {
    return createHash('sha256').update(readFileSync(p)).digest('hex');
  } catch {
    return null;
  }
}

const absent = (p: string) => {
  try {
    statSync(p);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT';
  }
};

/** `snap` standing on `path` by content too (hashed now, before the answer reads it; null: absent); racy when unreadable. */
export function withContent(snap: Snapshot, path: string): Snapshot {
  const sha256 = contentHash(path);
  if (sha256 === null && !absent(path)) return { ...snap, racy: true };
  return { ...snap, contents: [...(snap.contents ?? []), { path, sha256 }] };
}

/** Whether the files `snap` stands on by content still hold those bytes (read again after the answer was computed). */
export function contentsUnchanged(snap: Snapshot): boolean {
  return (snap.contents ?? []).every((c) => contentHash(c.path) === c.sha256 && (c.sha256 !== null || absent(c.path)));
}

/**
 * Writes the script for (kind, args) printing `answer` while `snap`'s files are as node saw them; removes it
 * instead when stat does not print exactly that now (a file changed meanwhile, or a stat without nanoseconds),
 * or when a file was racy in the snapshot (node answers next time, and records then).
 */
export function recordAnswer(root: string, kind: RuntimeKind, args: string[], snap: Snapshot, answer: string): boolean {
  const file = join(root, scriptPath(kind, args));
  const expected = snap.lines.filter((l) => l !== null).join('\n');
  const contents = snap.contents ?? [];
  let ok = !snap.racy && snap.paths.length > 0 && ![...snap.paths, ...contents.map((c) => c.path)].some((p) => /[\n\0]/.test(p) || p.startsWith('-'));
  if (ok) {
    const r = spawnSync('stat', ['-L', `--printf=${FORMAT}`, '--', ...snap.paths], { encoding: 'utf8', timeout: 10_000 });
    ok = !r.error && typeof r.stdout === 'string' && r.stdout.replace(/\n+$/, '') === expected;
  }
  // As for stat: a script only where sha256sum prints what node computed.
  for (const c of contents) {
    if (!ok) break;
    if (c.sha256 === null) {
      ok = absent(c.path);
      continue;
    }
    const r = spawnSync('sh', ['-c', 'sha256sum < "$1"', 'sh', c.path], { encoding: 'utf8', timeout: 10_000 });
    ok = !r.error && r.stdout === `${c.sha256}  -\n`;
  }
  try {
    if (!ok) {
      rmSync(file, { force: true });
      return false;
    }
    mkdirSync(join(file, '..'), { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(
      tmp,
      `# moe-forge: the answer of node build/runtime/${kind}.js while these files are unchanged (tools/executors/fast-input.ts)\n` +
        `[ "$(stat -L --printf=${quote(FORMAT)} -- ${snap.paths.map(quote).join(' ')} 2>/dev/null)" = ${quote(expected)} ] || exit 1\n` +
        contents.map((c) => (c.sha256 === null ? `[ -e ${quote(c.path)} ] || [ -L ${quote(c.path)} ] && exit 1\n` : `[ "$(sha256sum < ${quote(c.path)} 2>/dev/null)" = ${quote(`${c.sha256}  -`)} ] || exit 1\n`)).join('') +
        `printf '%s' ${quote(answer)}\n`,
    );
    renameSync(tmp, file);
    return true;
  } catch {
    return false; // no script: node answers next time
  }
}

/** Removes the script for (kind, args): its answer must not be given again (e.g. a Hub branch, resolved each build). */
export function dropAnswer(root: string, kind: RuntimeKind, args: string[]): void {
  try {
    rmSync(join(root, scriptPath(kind, args)), { force: true });
  } catch {
    // nothing to remove
  }
}
