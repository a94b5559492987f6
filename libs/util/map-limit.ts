/**
 * `fn` over `items` with at most `limit` calls in flight, results in the items' order; the first rejection
 * rejects the whole (calls already started still finish, none starts after it). `failed` is aborted with that
 * first error, for calls in flight that can stop early.
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number, failed: AbortSignal) => Promise<R>): Promise<R[]> {
  if (!(limit >= 1)) throw new RangeError(`mapLimit: limit ${limit} must be at least 1`);
  const out: R[] = new Array(items.length);
  let next = 0;
  const failed = new AbortController();
  const lane = async () => {
    while (!failed.signal.aborted && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i, failed.signal);
      } catch (e) {
        if (!failed.signal.aborted) failed.abort(e);
        throw e;
      }
    }
  };
  const lanes = Array.from({ length: Math.min(limit, items.length) }, lane);
  // Every lane settles before the result (or the first error) is given: nothing runs on after the caller moved on.
  const settled = await Promise.allSettled(lanes);
  const bad = settled.find((s) => s.status === 'rejected');
  if (bad) throw (bad as PromiseRejectedResult).reason;
  return out;
}
