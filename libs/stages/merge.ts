// The whole merge moved to the pipeline library (libs/pipeline/merge.ts); this name stays for existing callers.
export * from '../pipeline/merge';
