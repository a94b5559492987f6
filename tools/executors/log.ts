/**
 * Plain console output for the executors. @nx/devkit's logger does the same but costs ~0.2 s to load in
 * every task process, which is most of a no-op stage's time. `nx ... --verbose` (NX_VERBOSE_LOGGING) turns on
 * debug lines: stage inputs, the chosen architecture and why, per-shard decisions, cache hits.
 */
export const verbose = () => process.env.NX_VERBOSE_LOGGING === 'true' || process.env.MOE_FORGE_DEBUG === '1';

export const logger = {
  info: (s: string) => console.log(s),
  warn: (s: string) => console.warn(s),
  error: (s: string) => console.error(s),
  debug: (s: string) => {
    if (verbose()) console.log(`debug: ${s}`);
  },
};
