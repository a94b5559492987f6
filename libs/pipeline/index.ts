export * from './env';
export * from './table';
export * from './merge';
export * from './speculate';
export * from './watch';
