export * from './env';
export * from './table';
