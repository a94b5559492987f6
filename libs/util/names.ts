/**
 * Whether a name read from a file (a stamp, a weight index, a plan) can be joined to its folder as a path that
 * stays there: a non-empty plain file name, no separator, no NUL, not hidden (so neither `.` nor `..`).
 */
export function isPlainFileName(name: unknown): name is string {
  return typeof name === 'string' && name !== '' && !name.startsWith('.') && !/[/\\\0]/.test(name);
}
