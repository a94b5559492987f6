export * from './schema';
export * from './parse';
export * from './reference';
export * from './validate';
export { suggest } from './suggest';
