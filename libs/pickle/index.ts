export * from './zip';
export * from './unpickler';
export * from './checkpoint';
