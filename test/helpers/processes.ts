import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';

/** Whether a process of that id still exists (signal 0 checks without sending anything). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Waits (up to 5 s, polling every 25 ms) for `cond`, then asserts it, with `what` as the message. */
export async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(cond(), what);
}

/** Child pids of a process (Linux /proc), to check that no forward-pass worker outlives its parent. */
export function descendants(pid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(e), ...descendants(Number(e)));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}
