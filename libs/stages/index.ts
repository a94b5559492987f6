// The stages library's public surface: other libraries and the front ends import through this file.
export * from './assemble';
export * from './build-gates';
export * from './context';
export * from './embed-prompts';
export * from './fetch';
export * from './merged-model';
export * from './report';
export * from './write';
