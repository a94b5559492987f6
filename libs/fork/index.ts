// The fork library's public surface: how worker processes are forked (the forward and routing workers), and the
// slot through which the command's first lines hand an early forward worker to the merge.
export * from './fork-worker';
export * from './huge-malloc';
