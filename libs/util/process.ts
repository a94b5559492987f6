import { readFileSync, statSync } from 'node:fs';

/** Whether a process with this pid exists (signal 0 checks without sending anything). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** When a process started (ms since the epoch), from Linux's /proc; null elsewhere. */
export function processStartedAt(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    const btime = Number(/^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1]);
    // USER_HZ is 100 on every Linux architecture Node runs on.
    return Number.isFinite(ticks) && Number.isFinite(btime) ? btime * 1000 + ticks * 10 : null;
  } catch {
    return null;
  }
}

/**
 * Whether a temporary path named after process `pid` was left by a process that is gone: the pid is dead,
 * or it is alive but started after the path was made (the pid was reused: in a container a killed run was
 * often pid 1, as is the next one). `ours` says whether this process uses the path now.
 */
export function leftByDeadProcess(pid: number, path: string, ours: (path: string) => boolean): boolean {
  if (pid === process.pid) return !ours(path);
  if (!processAlive(pid)) return true;
  const started = processStartedAt(pid);
  if (started === null) return false;
  try {
    const st = statSync(path);
    return Math.min(st.birthtimeMs || Infinity, st.mtimeMs) < started - 2000;
  } catch {
    return false;
  }
}
