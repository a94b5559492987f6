export * from './schema';
export * from './parse';
export * from './validate';
export { suggest } from './suggest';
export * from './placeholders';
