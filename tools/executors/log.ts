/**
 * Plain console output for the executors. @nx/devkit's logger does the same but costs ~0.2 s to load in
 * every task process, which is most of a no-op stage's time.
 */
export const logger = {
  info: (s: string) => console.log(s),
  warn: (s: string) => console.warn(s),
  error: (s: string) => console.error(s),
};
