import { closeSync, constants, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/** Whether folder `dir`'s file system opens files with O_DIRECT (Linux disks do; tmpfs before 6.6 does not). */
export function directIn(dir: string): boolean {
  if (process.platform !== 'linux' || constants.O_DIRECT === undefined) return false;
  const probe = join(dir, '.direct-probe');
  try {
    closeSync(openSync(probe, constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT));
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { force: true });
  }
}
