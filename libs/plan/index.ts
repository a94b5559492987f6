// The plan library's public surface: other libraries and the front ends import through this file.
export * from './types';
