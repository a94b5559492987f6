export * from './dtype';
export * from './header';
export * from './reader';
export * from './writer';
export * from './chunk-pool';
export * from './dtype-table';
export * from './float-wasm';
export * from './output-file';
