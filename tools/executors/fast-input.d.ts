export interface Snapshot {
  paths: string[];
  lines: (string | null)[];
  /** A file changed within the racy window of the snapshot: no answer may stand on it. */
  racy?: boolean;
}
export function runtimeCommand(kind: string, args: string[], platform?: NodeJS.Platform): string;
export function scriptPath(kind: string, args: string[]): string;
export function statLine(p: string): string | null;
export function snapshot(paths: string[]): Snapshot;
export function recordAnswer(root: string, kind: string, args: string[], snap: Snapshot, answer: string): boolean;
export function dropAnswer(root: string, kind: string, args: string[]): void;
