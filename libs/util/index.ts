// The util library's public surface: other libraries and the front ends import through this file.
export * from './cleanup';
export * from './escape';
export * from './lock';
export * from './names';
export * from './process';
export * from './progress';
export * from './prose';
export * from './stat-key';
export * from './work-folder';
export * from './write-whole';
export * from './map-limit';
export * from './addon';
