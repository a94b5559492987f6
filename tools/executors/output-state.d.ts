export function currentToken(root: string, project: string): string;
export function suspectFiles(root: string, project: string, dir: string): string[];
export function recordWrite(root: string, project: string, dir: string, names: string[], replaced: boolean): void;
export function stateFile(root: string, project: string): string;
