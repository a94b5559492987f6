import type { Snapshot } from './fast-input';
export function answer(root: string, args: string[], compute: (args: string[]) => Promise<{ text: string; deps: string[] | null }>): Promise<string>;
export function fromMemo(root: string, args: string[]): { text: string; snap: Snapshot } | null;
