/**
 * Every error a user can cause is a ForgeError: it names where the problem is (file, YAML position, field
 * path, tensor) and what was expected, so the CLI and the executors can print it without a stack trace.
 */
export interface ErrorPlace {
  file?: string;
  line?: number;
  column?: number;
  field?: string;
  tensor?: string;
}

export class ForgeError extends Error {
  readonly place: ErrorPlace;
  readonly code: string;
  constructor(code: string, message: string, place: ErrorPlace = {}) {
    super(ForgeError.compose(message, place));
    this.name = 'ForgeError';
    this.code = code;
    this.place = place;
  }

  private static compose(message: string, place: ErrorPlace): string {
    let where = place.file ?? '';
    if (place.file && place.line !== undefined) where += `:${place.line}${place.column !== undefined ? `:${place.column}` : ''}`;
    const bits: string[] = [];
    if (place.field) bits.push(`field ${place.field}`);
    if (place.tensor) bits.push(`tensor ${place.tensor}`);
    const prefix = [where, ...bits].filter(Boolean).join(', ');
    return prefix ? `${prefix}: ${message}` : message;
  }
}

export class RecipeError extends ForgeError {}
export class SafetensorsError extends ForgeError {}
export class ModelError extends ForgeError {}

export function isForgeError(e: unknown): e is ForgeError {
  return e instanceof ForgeError;
}

/**
 * One line for any error: ours name their place; a system error (disk full, permission) names its path;
 * anything else is a bug, said in one line too (the stack comes with -v).
 */
export function describeError(e: unknown): string {
  if (isForgeError(e)) return e.message;
  const err = e as NodeJS.ErrnoException;
  if (typeof err?.code === 'string' && typeof err.syscall === 'string') {
    const what: Record<string, string> = { ENOSPC: 'the disk is full', EDQUOT: 'disk quota exceeded', EACCES: 'permission denied', EPERM: 'operation not permitted', EROFS: 'read-only file system', ENOTDIR: 'a part of the path is a file, not a folder', EISDIR: 'is a folder, not a file', EMFILE: 'too many open files' };
    return `${err.path ?? ''}${err.path ? ': ' : ''}${what[err.code] ?? err.message} (${err.code} on ${err.syscall})`;
  }
  return `internal error: ${(e as Error)?.message ?? String(e)} (run with -v for the stack; please report it)`;
}
