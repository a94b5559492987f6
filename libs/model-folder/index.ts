// The model-folder library's public surface: other libraries and the front ends import through this file.
export * from './config';
export * from './shapes';
export * from './weights';
