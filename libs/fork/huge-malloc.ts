/** The glibc tunable that has malloc ask for transparent huge pages (madvise) on the memory it maps. */
export const HUGE_MALLOC_TUNABLE = 'glibc.malloc.hugetlb=1';

/** `GLIBC_TUNABLES` with huge-page malloc added, unless it already says what malloc should do about huge pages. */
export function withHugeMalloc(tunables: string | undefined): string {
  if (!tunables) return HUGE_MALLOC_TUNABLE;
  return /(^|:)glibc\.malloc\.hugetlb=/.test(tunables) ? tunables : `${tunables}:${HUGE_MALLOC_TUNABLE}`;
}
