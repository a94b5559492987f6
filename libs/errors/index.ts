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
