// The architectures library's public surface: other libraries and the front ends import through this file.
export * from './common';
export * from './registry';
export * from './types';
