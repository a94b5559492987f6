import type { BigIntStats } from 'node:fs';
export const RACY_NS: bigint;
export function nowNs(): bigint;
export function statKey(st: BigIntStats): string;
export function fileKey(p: string): string | null;
export function isRacy(st: BigIntStats | { mtimeNs: bigint; ctimeNs: bigint } | string, atNs: bigint): boolean;
export function readStable<T>(file: string, read: (file: string) => Promise<T>, tries?: number): Promise<{ value: T; key: string; racy: boolean } | null>;
export function settledKey(p: string): string | null;
export function sleepUntil(ns: bigint): void;
