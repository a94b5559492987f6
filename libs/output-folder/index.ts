// The output folder's transaction: one writer (its lock), the stamp that says who owns it, temporary folders
// swapped into place, user files and mount points kept (transaction.ts); and the record of what a merge outside
// Nx wrote there (record.ts).
export * from './transaction';
export * from './record';
