// The files stages hand each other: their schemas and versions, the checked reader, the one-line refusal.
export * from './stage-files';
