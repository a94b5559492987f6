// Expert noise: the reference's torch draw order and generator positions, our per-tensor streams, and the
// appliers that add it to a tensor's bytes through the float kernels.
export * from './noise';
export { setNormalsAheadThreads } from './normals-ahead';
