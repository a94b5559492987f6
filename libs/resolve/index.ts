export * from './reference';
export * from './settings';
export * from './files';
export * from './hf-cache';
export * from './hub';
export * from './content-id';
export * from './resolve';
export * from './http';
