// The forward pass's bf16 projections: y = x W^T (+ b) with W the model's bf16 [N, K] rows as stored, x float32
// rounded to bf16 (round to nearest even) and every product summed in float32. On CPUs with AVX512-BF16 the sums
// are vdpbf16ps (two products per lane per instruction, twice fp32 FMA's rate); elsewhere, and when asked (tests),
// a portable loop computes the same products in float32 (its sums round apart in the last bits).
//
// Wide (the fp32 pass on bf16 weights): x kept float32 and each bf16 weight widened to float32 (exact), so every
// product is float32's and only the order of the sums differs from onnxruntime's Gemm; AVX-512F (vfmadd231ps, the
// weights widened a block of rows at a time into a buffer that stays in L2: no float32 copy of a layer is made), or
// the portable loop.
//
// Wide products also take float16 weights (f16: vcvtph2ps, exact).
//
// One call: matmul(a, w, bias, out, M, N, K, mode, rowScale, w2, bias2, threads, portable, wide, f16, outCols, outCol,
//                   xTiles, xReady) -> Promise<void>
//   mode 0: out = y;  mode 1: out += rowScale[m] * y (rowScale null: 1);  mode 2: out = silu(y) * y2, y2 from w2.
//   y's N columns land at columns [outCol, outCol + N) of out's rows of outCols (a pass streams a projection's rows
//   through a few reused buffers, one range of rows per call). x's tiles go into xTiles where given (the caller's,
//   kept between calls), and with xReady they are already there: the calls over one x convert it once.
// The work runs off the JavaScript thread on `threads` threads of a pool kept for the process, claiming blocks of W's rows.
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <immintrin.h>

#define MR 6     // rows of x per tile
#define NR 4     // rows of W per tile
#define KC 2048  // bf16 values of a row per pass (4 KiB): a tile's x rows stay in L1
#define KC_WIDE 2048  // the same for float32 x (8 KiB a row): fewer passes over K, fewer reductions and sums to
                      // carry (down_proj at M = 70 +10% against 1024, large M even; 512 no faster)
#define NB_WIDE 64     // rows of W per widened block (512 KiB of float32; 128 measured no faster)
#define NB 64    // rows of W per block (NB * KC * 2 = 256 KiB): the block stays in L2

typedef struct Job {
  const float *a;
  const uint16_t *w, *w2;
  const float *bias, *bias2, *rowScale;
  float *out;
  int M, N, K, Kp, mode, threads, portable, wide, f16;  // f16: w and w2 hold IEEE halves (wide only)
  int outCols, outCol;  // out's row length, and where y's columns start in it
  int xReady, xOwned;   // x's tiles already in ax (the caller's xTiles); ax is the pool's (not the caller's)
  // x in tiles, [M/MR][Kp/32][MR][32], zero past M and K (a tile's loads run in order): bf16, or (wide) float32
  // with each chunk of 32 in the order the widened weights take (wide_pos).
  void *ax;
  size_t axBytes;
  pthread_barrier_t barrier;
  napi_deferred deferred;
  napi_threadsafe_function done;  // resolves the promise on the JavaScript thread
  struct Job *next;  // the pool's queue
  unsigned long seq;  // its place in the queue (from 1)
  int passed;         // pool threads done with it (their part run, or none to run)
  napi_ref refs[7];
  int nrefs;
  int failed;
  // The next x tile and the next block of W's rows to claim: parts are claimed, not dealt out, so a thread that
  // another process (the weights' reads) holds off a core costs its share of the work, not the whole product's.
  int nextTile, nextBlock;
} Job;

static inline uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fff + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

// IEEE half to float32 (exact: every half is a float32), subnormals, infinities and NaN included.
static inline float from_f16(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  uint32_t u;
  if (e == 0x1f) u = sign | 0x7f800000 | (m << 13);
  else if (e) u = sign | ((e + 112) << 23) | (m << 13);
  else if (!m) u = sign;
  else {
    int s = 0;  // subnormal: normalise
    uint32_t mm = m;
    while (!(mm & 0x400)) mm <<= 1, s++;
    u = sign | ((uint32_t)(113 - s) << 23) | ((mm & 0x3ff) << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// ------------------------------------------------------------------------------------------------ AVX512-BF16

// The lane sums of a, b, c, d (one each): halves, then 128-bit blocks, then lanes, added across the four at once.
__attribute__((target("avx512f"))) static inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
  __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(2, 3, 0, 1)));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), t));
}

// acc[i][j] = sum over k in [k0, k1) of x_i[k] * w_j[k]; x rows padded (zeros) to a multiple of 32, w rows masked.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void tile_bf16(const uint16_t *x, int mr, const uint16_t *w, int ws, int nr, int k0, int k1, int kEnd, float *acc /* [MR][NR] */) {
  __m512 c[MR][NR];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) c[i][j] = _mm512_setzero_ps();
  (void)mr;  // rows past M are zeros in x's tiles: the full kernel runs, its extra sums unused
  if (nr == NR) {
    int k = k0;
    for (; k + 32 <= k1 && k + 32 <= kEnd; k += 32) {
      __m512bh b0 = (__m512bh)_mm512_loadu_si512(w + k), b1 = (__m512bh)_mm512_loadu_si512(w + ws + k);
      __m512bh b2 = (__m512bh)_mm512_loadu_si512(w + 2 * ws + k), b3 = (__m512bh)_mm512_loadu_si512(w + 3 * ws + k);
#pragma GCC unroll 6
      for (int i = 0; i < MR; i++) {
        __m512bh ai = (__m512bh)_mm512_loadu_si512(x + k * MR + i * 32);
        c[i][0] = _mm512_dpbf16_ps(c[i][0], ai, b0);
        c[i][1] = _mm512_dpbf16_ps(c[i][1], ai, b1);
        c[i][2] = _mm512_dpbf16_ps(c[i][2], ai, b2);
        c[i][3] = _mm512_dpbf16_ps(c[i][3], ai, b3);
      }
    }
    if (k < k1) {  // W's row ends inside this step: its tail is masked (x is zero there)
      __mmask32 m = (__mmask32)((1ull << (kEnd - k)) - 1);
      __m512bh b[NR];
      for (int j = 0; j < NR; j++) b[j] = (__m512bh)_mm512_maskz_loadu_epi16(m, w + j * ws + k);
      for (int i = 0; i < MR; i++) {
        __m512bh ai = (__m512bh)_mm512_loadu_si512(x + k * MR + i * 32);
        for (int j = 0; j < NR; j++) c[i][j] = _mm512_dpbf16_ps(c[i][j], ai, b[j]);
      }
    }
  } else {
    for (int k = k0; k < k1; k += 32) {
      __mmask32 m = kEnd - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1ull << (kEnd - k)) - 1);
      for (int j = 0; j < nr; j++) {
        __m512bh bj = (__m512bh)_mm512_maskz_loadu_epi16(m, w + j * ws + k);
        for (int i = 0; i < MR; i++) c[i][j] = _mm512_dpbf16_ps(c[i][j], (__m512bh)_mm512_loadu_si512(x + k * MR + i * 32), bj);
      }
    }
  }
  if (nr == NR) {
    for (int i = 0; i < MR; i++) _mm_storeu_ps(acc + i * NR, reduce4(c[i][0], c[i][1], c[i][2], c[i][3]));
  } else {
    for (int i = 0; i < MR; i++)
      for (int j = 0; j < nr; j++) acc[i * NR + j] = _mm512_reduce_add_ps(c[i][j]);
  }
}

// Where k % 32 of a chunk sits in a wide tile: unpacking 32 bf16 weights against zeros gives, per 128-bit block b,
// lo = w[8b .. 8b+3] and hi = w[8b+4 .. 8b+7] as float32 (the low words zero), so x takes the same order: the
// first 16 slots lo's, the next 16 hi's.
static inline int wide_pos(int r) {
  const int g = r / 8, w = r % 8;
  return w < 4 ? g * 4 + w : 16 + g * 4 + (w - 4);
}

// A block of W's rows [rows, k0..k1) widened to float32 once, so the tiles that read it (every tile of x's rows)
// load float32 and unpack nothing (widening in the tile's loop took the shuffle unit from the FMAs: 0.75x of
// onnxruntime's Gemm). Laid out as the tile reads it: per group of NR rows (the last padded with zero rows), per
// 16 values of k, the NR rows' 16 floats side by side (one stream of loads, not NR rows 4 KiB apart), each chunk
// of 32 in wide_pos order, zeros past kEnd. `f16`: the weights are IEEE halves (vcvtph2ps, exact), else bf16.
__attribute__((target("avx512f,avx512bw"))) static void pack_wide(const uint16_t *w, int ws, int rows, int k0, int k1, int kEnd, int f16, float *dst) {
  const __m512i zero = _mm512_setzero_si512();
  const int kw = k1 - k0, groups = (rows + NR - 1) / NR;
  for (int g = 0; g < groups; g++) {
    float *d = dst + (size_t)g * NR * kw;
    // k outer, the group's rows inner: each step loads its NR rows' 32 values, then writes 2 * NR whole lines in
    // order (row by row, the stores of one row interleaved with the next row's loads, stalled the loads: perf).
    // Whole groups up to the row's last whole chunk of 32 load without conditions; the rest as the edges need.
    const int kFast = (g + 1) * NR <= rows && kEnd > k0 ? k0 + (((kEnd < k1 ? kEnd : k1) - k0) & ~31) : k0;
    const uint16_t *w0 = w + (size_t)g * NR * ws;
    for (int k = k0; k < k1; k += 32) {
      __m512i raw[NR];
      if (k < kFast)
        for (int r = 0; r < NR; r++) raw[r] = _mm512_loadu_si512(w0 + (size_t)r * ws + k);
      else
        for (int r = 0; r < NR; r++) {
          const int row = g * NR + r;
          if (row >= rows) raw[r] = zero;
          else if (k + 32 <= kEnd) raw[r] = _mm512_loadu_si512(w + (size_t)row * ws + k);
          else if (k < kEnd) raw[r] = _mm512_maskz_loadu_epi16((__mmask32)((1ull << (kEnd - k)) - 1), w + (size_t)row * ws + k);
          else raw[r] = zero;
        }
      float *at = d + (size_t)(k - k0) * NR;
      for (int r = 0; r < NR; r++) {
        if (f16) {  // k in order, then into wide_pos order as to_wide_row_avx puts x
          const __m512 a = _mm512_cvtph_ps(_mm512_castsi512_si256(raw[r])), b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(raw[r], 1));
          _mm512_store_ps(at + r * 16, _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
          _mm512_store_ps(at + NR * 16 + r * 16, _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
          continue;
        }
        _mm512_store_ps(at + r * 16, _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, raw[r])));
        _mm512_store_ps(at + NR * 16 + r * 16, _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, raw[r])));
      }
    }
  }
}

// acc[i][j] = sum over k in [k0, k1) of x_i[k] * w_j[k]: x float32 in wide tiles, w one group of the block
// pack_wide made (k counted from k0). Every group has NR rows (zero rows past N: their sums unused).
__attribute__((target("avx512f"))) static void tile_wide(const float *x, const float *w, int k0, int k1, float *acc /* [MR][NR] */) {
  __m512 c[MR][NR];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) c[i][j] = _mm512_setzero_ps();
  for (int k = k0; k < k1; k += 16) {
    const float *wk = w + (size_t)(k - k0) * NR;
    const __m512 b0 = _mm512_load_ps(wk), b1 = _mm512_load_ps(wk + 16), b2 = _mm512_load_ps(wk + 32), b3 = _mm512_load_ps(wk + 48);
    // k runs in steps of 16: the first half of a chunk of 32 is lo's slots, the second hi's, in x as in w.
    const float *xk = x + (size_t)(k & ~31) * MR + (k & 16);
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++) {
      const __m512 ai = _mm512_loadu_ps(xk + i * 32);
      c[i][0] = _mm512_fmadd_ps(ai, b0, c[i][0]);
      c[i][1] = _mm512_fmadd_ps(ai, b1, c[i][1]);
      c[i][2] = _mm512_fmadd_ps(ai, b2, c[i][2]);
      c[i][3] = _mm512_fmadd_ps(ai, b3, c[i][3]);
    }
  }
  for (int i = 0; i < MR; i++) _mm_storeu_ps(acc + i * NR, reduce4(c[i][0], c[i][1], c[i][2], c[i][3]));
}

// One row of float32 x into its wide tile's slots (wide_pos order), zero past K.
__attribute__((target("avx512f"))) static void to_wide_row_avx(const float *src, int K, int Kp, float *dst) {
  for (int k = 0; k < Kp; k += 32) {
    const int n = K - k < 0 ? 0 : K - k;
    const __mmask16 lo = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1), hi = n >= 32 ? 0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(lo, src + k), b = _mm512_maskz_loadu_ps(hi, src + k + 16);
    _mm512_storeu_ps(dst + (size_t)k * MR, _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)));
    _mm512_storeu_ps(dst + (size_t)k * MR + 16, _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
  }
}

static void to_wide_row(const float *src, int K, int Kp, float *dst, int portable) {
  if (!portable) {
    to_wide_row_avx(src, K, Kp, dst);
    return;
  }
  for (int k = 0; k < Kp; k++) dst[(size_t)(k / 32) * 32 * MR + wide_pos(k % 32)] = k < K ? src[k] : 0.0f;
}

// The same sums, portably, for either kind of tile: each product of two bf16 values (or, wide, of a float32 x and a
// widened weight) is exact in float32 (wide: rounded once), summed in float32.
static void tile_portable(const void *x, int wide, int f16, int mr, const uint16_t *w, int ws, int nr, int k0, int k1, int kEnd, float *acc) {
  if (k1 > kEnd) k1 = kEnd;
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < nr; j++) {
      const uint16_t *wj = w + j * ws;
      float lanes[16] = {0};
      for (int k = k0; k < k1; k += 16)
        for (int l = 0; l < 16 && k + l < k1; l++) {
          const int kk = k + l;
          const size_t at = (size_t)(kk / 32) * 32 * MR + i * 32;
          const float xv = wide ? ((const float *)x)[at + wide_pos(kk % 32)] : from_bf16(((const uint16_t *)x)[at + kk % 32]);
          lanes[l] += xv * (f16 ? from_f16(wj[kk]) : from_bf16(wj[kk]));
        }
      float s = 0;
      for (int l = 0; l < 16; l++) s += lanes[l];
      acc[i * NR + j] = s;
    }
}

// One row of x into its tile's slots (every MR * 32 values a chunk of 32), zero past K.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void to_bf16_row_avx(const float *src, int K, int Kp, uint16_t *dst) {
  for (int k = 0; k < Kp; k += 32) {
    const int n = K - k < 0 ? 0 : K - k;
    const __mmask16 lo = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1), hi = n >= 32 ? 0xffff : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
    __m512 a = _mm512_maskz_loadu_ps(lo, src + k), b = _mm512_maskz_loadu_ps(hi, src + k + 16);
    _mm512_storeu_si512(dst + (size_t)k * MR, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  }
}

static void to_bf16_row(const float *src, int K, int Kp, uint16_t *dst, int portable) {
  if (!portable) {
    to_bf16_row_avx(src, K, Kp, dst);
    return;
  }
  for (int k = 0; k < Kp; k++) dst[(size_t)(k / 32) * 32 * MR + k % 32] = k < K ? to_bf16(src[k]) : 0;
}

static int has_bf16(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
}

static int has_wide(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

static inline float silu(float g) { return g / (1.0f + expf(-g)); }

// exp(x) for x in float32's range: 2^n * e^f with |f| <= ln2/2, e^f by a degree-6 polynomial (relative error about
// 2e-7; silu's output is rounded to bf16 before down_proj takes it).
__attribute__((target("avx512f"))) static inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-103.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  f = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), f);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// o[c] = silu(s[c] + b[c]) * (s2[c] + b2[c]) for c < n (b, b2 may be null).
__attribute__((target("avx512f"))) static void silu_gate_avx(float *o, const float *s, const float *b, const float *s2, const float *b2, int n) {
  for (int c = 0; c < n; c += 16) {
    const __mmask16 m = n - c >= 16 ? 0xffff : (__mmask16)((1u << (n - c)) - 1);
    __m512 y = _mm512_maskz_loadu_ps(m, s + c), y2 = _mm512_maskz_loadu_ps(m, s2 + c);
    if (b) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, b + c));
    if (b2) y2 = _mm512_add_ps(y2, _mm512_maskz_loadu_ps(m, b2 + c));
    const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), y));
    _mm512_mask_storeu_ps(o + c, m, _mm512_mul_ps(_mm512_div_ps(y, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), y2));
  }
}

// One block of W's rows [nb, nbEnd) (at most NB, NB_WIDE for wide): K in passes of KC, x in tiles of MR rows.
static void run_block(Job *j, int nb, int nbEnd, float *scratch, float *scratch2, float *packed) {
  const int M = j->M, K = j->K, Kp = j->Kp, kc = j->wide ? KC_WIDE : KC, width = nbEnd - nb;
  float acc[MR * NR];
  for (int pass = 0; pass < (j->w2 ? 2 : 1); pass++) {
    const uint16_t *w = pass ? j->w2 : j->w;
    float *s = pass ? scratch2 : scratch;  // [M, width]
    for (int k0 = 0; k0 < Kp; k0 += kc) {
      const int k1 = k0 + kc < Kp ? k0 + kc : Kp;
      if (j->wide && !j->portable) pack_wide(w + (size_t)nb * K, K, width, k0, k1, K, j->f16, packed);
      for (int m = 0; m < M; m += MR) {
        const int mr = M - m < MR ? M - m : MR;
        for (int n = nb; n < nbEnd; n += NR) {
          const int nr = nbEnd - n < NR ? nbEnd - n : NR;
          const size_t xt = (size_t)m * Kp;  // the tile's first value in x
          if (j->wide && !j->portable) tile_wide((const float *)j->ax + xt, packed + (size_t)(n - nb) * (k1 - k0), k0, k1, acc);
          else if (j->portable) tile_portable(j->wide ? (const void *)((const float *)j->ax + xt) : (const void *)((const uint16_t *)j->ax + xt), j->wide, j->f16, mr, w + (size_t)n * K, K, nr, k0, k1, K, acc);
          else tile_bf16((const uint16_t *)j->ax + xt, mr, w + (size_t)n * K, K, nr, k0, k1, K, acc);
          for (int i = 0; i < mr; i++)
            for (int c = 0; c < nr; c++) {
              float *d = s + (size_t)(m + i) * width + (n - nb) + c;
              *d = k0 == 0 ? acc[i * NR + c] : *d + acc[i * NR + c];
            }
        }
      }
    }
  }
  for (int m = 0; m < M; m++) {
    float *o = j->out + (size_t)m * j->outCols + j->outCol + nb;
    const float *s = scratch + (size_t)m * width, *s2 = scratch2 ? scratch2 + (size_t)m * width : NULL;
    const float rs = j->rowScale ? j->rowScale[m] : 1.0f;
    if (j->mode == 2 && !j->portable) {
      silu_gate_avx(o, s, j->bias ? j->bias + nb : NULL, s2, j->bias2 ? j->bias2 + nb : NULL, width);
      continue;
    }
    for (int c = 0; c < width; c++) {
      float y = s[c] + (j->bias ? j->bias[nb + c] : 0.0f);
      if (j->mode == 0) o[c] = y;
      else if (j->mode == 1) o[c] += rs * y;
      else o[c] = silu(y) * (s2[c] + (j->bias2 ? j->bias2[nb + c] : 0.0f));
    }
  }
}

// Thread t's part of a job: the tiles of x it claims (to bf16, or wide), then (once every thread has converted) the
// blocks of W's rows it claims.
static void thread_part(Job *j, int t) {
  // x into tiles, each claimed by one thread, then every thread waits for the whole of it (unless they are there).
  const int tiles = j->xReady ? 0 : (j->M + MR - 1) / MR;
  const size_t size = j->wide ? sizeof(float) : sizeof(uint16_t);
  for (int tt; (tt = __atomic_fetch_add(&j->nextTile, 1, __ATOMIC_RELAXED)) < tiles;) {
    char *dst = (char *)j->ax + (size_t)tt * MR * j->Kp * size;
    for (int i = 0; i < MR; i++) {
      const int m = tt * MR + i;
      char *row = dst + (size_t)i * 32 * size;
      if (m >= j->M) {
        for (int k = 0; k < j->Kp; k += 32) memset(row + (size_t)k * MR * size, 0, 32 * size);
        continue;
      }
      if (j->wide) to_wide_row(j->a + (size_t)m * j->K, j->K, j->Kp, (float *)row, j->portable);
      else to_bf16_row(j->a + (size_t)m * j->K, j->K, j->Kp, (uint16_t *)row, j->portable);
    }
  }
  if (!j->xReady) pthread_barrier_wait(&j->barrier);
  // W's rows in blocks of NB (NB_WIDE), claimed one at a time; a block's sums do not depend on who claims it.
  const int nbs = j->wide ? NB_WIDE : NB, blocks = (j->N + nbs - 1) / nbs;
  // Threads past the number of blocks take none (the others claim them all): no scratch for them.
  if (t < blocks) {
    // The products' sums [M, NB] (twice with w2), and for wide a block of W widened (NB rows of KC_WIDE).
    const size_t sums = (size_t)j->M * nbs * (j->w2 ? 2 : 1), pack = j->wide ? (size_t)(NB_WIDE + NR) * KC_WIDE : 0;
    // Kept by the pool thread from job to job (grown, never shrunk): a fresh buffer per product is fresh pages,
    // which on the VMs measured cost about 2.5 ms per MB to fault in once the host has taken freed memory back.
    static __thread float *kept;
    static __thread size_t keptFloats;
    const size_t want = sums + pack + 16;
    if (keptFloats < want) {
      free(kept);
      kept = malloc(sizeof(float) * want);
      keptFloats = kept ? want : 0;
    }
    float *scratch = kept;
    if (!scratch) {
      j->failed = 1;
      return;
    }
    float *packed = (float *)(((uintptr_t)(scratch + sums) + 63) & ~(uintptr_t)63);  // 64-byte aligned: whole-line loads
    for (int b; (b = __atomic_fetch_add(&j->nextBlock, 1, __ATOMIC_RELAXED)) < blocks;) {
      const int n0 = b * nbs, n1 = n0 + nbs < j->N ? n0 + nbs : j->N;
      run_block(j, n0, n1, scratch, j->w2 ? scratch + (size_t)j->M * nbs : NULL, packed);
    }
  }
}

// A pool of threads made once (per process) and kept: threads made for each product start beside their maker and
// the scheduler took milliseconds to spread them over the cores, halving small products. Jobs queue and each thread
// runs them in order, each on its `threads` first pool threads (the pool grows to the most asked); a thread done with
// its part of one goes on to the next without waiting for the others (a pass queues a projection's pieces one after
// another: waiting at each one's end left a core idle for the other's last block), and the thread that finishes a
// job's last part settles its promise on the JavaScript thread. Callers queue a job that reads another's output
// only once that one has settled.
#define POOL_MAX 64
static struct {
  pthread_mutex_t mu;
  pthread_cond_t wake;
  int size;
  Job *head, *tail;  // queued jobs not yet passed by every thread, in order
  void *spare;  // the last finished job's x buffer, for the next (as the threads' scratch: fresh pages are slow)
  size_t spareBytes;
  unsigned long queued;  // the last job's number
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, NULL, NULL, NULL, 0, 0};

static void job_done(Job *j);

// The first queued job after number `ran` (NULL: none yet). Jobs leave the queue in order, so those a thread has
// not passed are all still in it.
static Job *next_job(unsigned long ran) {
  Job *j = pool.head;
  while (j && j->seq <= ran) j = j->next;
  return j;
}

static void *pool_thread(void *arg) {
  const int t = (int)(intptr_t)arg;
  pthread_mutex_lock(&pool.mu);
  // A new thread counts towards every job from the oldest queued on (beyond its threads, it only counts).
  unsigned long ran = pool.head ? pool.head->seq - 1 : pool.queued;
  for (;;) {
    Job *j;
    while (!(j = next_job(ran))) pthread_cond_wait(&pool.wake, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    if (t < j->threads && j->ax) thread_part(j, t);
    pthread_mutex_lock(&pool.mu);
    ran = j->seq;
    if (++j->passed == pool.size) {
      // Every pool thread is done with it (so with every job before it): it leaves the queue, its head.
      pool.head = j->next;
      if (!pool.head) pool.tail = NULL;
      pthread_mutex_unlock(&pool.mu);
      job_done(j);
      pthread_mutex_lock(&pool.mu);
    }
  }
  return NULL;
}

// The bytes of x's tiles: whole tiles of MR rows, K padded to Kp.
static size_t tiles_bytes(int wide, int M, int Kp) { return (wide ? sizeof(float) : sizeof(uint16_t)) * (size_t)((M + MR - 1) / MR * MR) * Kp; }

// Queues a job (its x buffer, unless the caller gave one, allocated here; the pool made or grown first).
static int pool_submit(Job *j) {
  if (!j->ax) {
    const size_t axBytes = tiles_bytes(j->wide, j->M, j->Kp);
    j->xOwned = 1;
    pthread_mutex_lock(&pool.mu);
    if (pool.spare && pool.spareBytes >= axBytes) {
      j->ax = pool.spare, j->axBytes = pool.spareBytes;
      pool.spare = NULL, pool.spareBytes = 0;
    }
    pthread_mutex_unlock(&pool.mu);
    if (!j->ax) j->ax = malloc(axBytes), j->axBytes = axBytes;
  }
  if (!j->ax) j->failed = 1;
  else pthread_barrier_init(&j->barrier, NULL, (unsigned)j->threads);
  pthread_mutex_lock(&pool.mu);
  while (pool.size < j->threads) {
    pthread_t id;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    // A new thread counts towards every job from the one at the head on (beyond its threads, it only counts).
    int ok = pthread_create(&id, &attr, pool_thread, (void *)(intptr_t)pool.size) == 0;
    pthread_attr_destroy(&attr);
    if (!ok) {
      pthread_mutex_unlock(&pool.mu);
      return 0;
    }
    pool.size++;
  }
  j->next = NULL;
  j->seq = ++pool.queued;
  if (pool.tail) pool.tail->next = j;
  else pool.head = j;
  pool.tail = j;
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.mu);
  return 1;
}

static void job_done(Job *j) {
  if (j->ax && !j->xOwned) pthread_barrier_destroy(&j->barrier);  // the caller's tiles: theirs to keep
  else if (j->ax) {
    pthread_barrier_destroy(&j->barrier);
    // Kept for the next job (the larger of it and the one kept).
    pthread_mutex_lock(&pool.mu);
    if (j->axBytes > pool.spareBytes) {
      void *old = pool.spare;
      pool.spare = j->ax, pool.spareBytes = j->axBytes;
      j->ax = old;
    }
    pthread_mutex_unlock(&pool.mu);
    free(j->ax);
    j->ax = NULL;
  }
  napi_threadsafe_function done = j->done;  // settle frees the job, maybe before the release
  napi_call_threadsafe_function(done, j, napi_tsfn_blocking);
  napi_release_threadsafe_function(done, napi_tsfn_release);
}

static void settle(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)context;
  Job *j = (Job *)data;
  if (env) {
    napi_value undef;
    napi_get_undefined(env, &undef);
    if (!j->failed) {
      napi_resolve_deferred(env, j->deferred, undef);
    } else {
      napi_value msg, err;
      napi_create_string_utf8(env, "bf16 matmul: out of memory, or no thread could be made", NAPI_AUTO_LENGTH, &msg);
      napi_create_error(env, NULL, msg, &err);
      napi_reject_deferred(env, j->deferred, err);
    }
    for (int i = 0; i < j->nrefs; i++) napi_delete_reference(env, j->refs[i]);
  }
  free(j);
}

static napi_value fail(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

// A typed array's data and element count, null for JavaScript null/undefined (when allowed); with a job, a reference
// keeps it alive until the job is settled.
static int view(napi_env env, Job *j, napi_value v, napi_typedarray_type want, void **data, size_t *length, int optional) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_null || t == napi_undefined) {
    *data = NULL;
    *length = 0;
    return optional;
  }
  bool is;
  napi_is_typedarray(env, v, &is);
  if (!is) return 0;
  napi_typedarray_type type;
  napi_value ab;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, length, data, &ab, &offset) != napi_ok || type != want) return 0;
  if (j) napi_create_reference(env, v, 1, &j->refs[j->nrefs++]);
  return 1;
}

static napi_value matmul(napi_env env, napi_callback_info info) {
  size_t argc = 19;
  napi_value argv[19];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 19) return fail(env, "matmul: 19 arguments expected");
  int32_t dims[4], threads, portable, wide, f16, outCols, outCol, xReady;
  for (int i = 0; i < 4; i++)
    if (napi_get_value_int32(env, argv[4 + i], &dims[i]) != napi_ok) return fail(env, "matmul: M, N, K and mode must be integers");
  if (napi_get_value_int32(env, argv[11], &threads) != napi_ok || napi_get_value_int32(env, argv[12], &portable) != napi_ok || napi_get_value_int32(env, argv[13], &wide) != napi_ok ||
      napi_get_value_int32(env, argv[14], &f16) != napi_ok)
    return fail(env, "matmul: threads, portable, wide and f16 must be integers");
  if (napi_get_value_int32(env, argv[15], &outCols) != napi_ok || napi_get_value_int32(env, argv[16], &outCol) != napi_ok || napi_get_value_int32(env, argv[18], &xReady) != napi_ok)
    return fail(env, "matmul: outCols, outCol and xReady must be integers");
  const int M = dims[0], N = dims[1], K = dims[2], mode = dims[3];
  if (M < 1 || N < 1 || K < 1 || mode < 0 || mode > 2) return fail(env, "matmul: M, N, K must be positive and mode 0, 1 or 2");
  if (threads < 1 || threads > 64) return fail(env, "matmul: threads must be 1..64");
  Job *j = calloc(1, sizeof(Job));
  if (!j) return fail(env, "matmul: out of memory");
  size_t na, nw, nb, no, nrs, nw2, nb2, nxt;
  void *a, *w, *bias, *out, *rs, *w2, *bias2, *xt;
  int ok = view(env, j, argv[0], napi_float32_array, &a, &na, 0) && view(env, j, argv[1], napi_uint16_array, &w, &nw, 0) &&
           view(env, j, argv[2], napi_float32_array, &bias, &nb, 1) && view(env, j, argv[3], napi_float32_array, &out, &no, 0) &&
           view(env, j, argv[8], napi_float32_array, &rs, &nrs, 1) && view(env, j, argv[9], napi_uint16_array, &w2, &nw2, 1) &&
           view(env, j, argv[10], napi_float32_array, &bias2, &nb2, 1) &&
           view(env, j, argv[17], wide ? napi_float32_array : napi_uint16_array, &xt, &nxt, 1);
  const int Kp = (K + 31) / 32 * 32;
  const char *bad = !ok ? "matmul: a, out: Float32Array; w, w2: Uint16Array; bias, bias2, rowScale: Float32Array or null; xTiles: Float32Array (wide) or Uint16Array, or null"
                    : na != (size_t)M * K ? "matmul: a must hold M*K values"
                    : nw != (size_t)N * K ? "matmul: w must hold N*K values"
                    : (bias && nb != (size_t)N) ? "matmul: bias must hold N values"
                    : outCols < N || outCol < 0 || outCol > outCols - N ? "matmul: out's columns [outCol, outCol + N) must lie in its outCols"
                    : no != (size_t)M * outCols ? "matmul: out must hold M*outCols values"
                    : (xt && nxt * (wide ? 4 : 2) < tiles_bytes(wide, M, Kp)) ? "matmul: xTiles must hold ceil(M/6)*6 rows of K rounded up to 32"
                    : (xReady && !xt) ? "matmul: xReady needs xTiles"
                    : (rs && nrs != (size_t)M) ? "matmul: rowScale must hold M values"
                    : (mode == 2) != (w2 != NULL) ? "matmul: w2 is given exactly when mode is 2"
                    : (w2 && nw2 != (size_t)N * K) ? "matmul: w2 must hold N*K values"
                    : (bias2 && nb2 != (size_t)N) ? "matmul: bias2 must hold N values"
                    : (f16 && !wide) ? "matmul: float16 weights are for wide products only"
                    : (!portable && !wide && !has_bf16()) ? "matmul: this CPU has no AVX512-BF16"
                    : (!portable && wide && !has_wide()) ? "matmul: this CPU has no AVX-512 (wide needs AVX512F and AVX512BW)"
                    : NULL;
  if (bad) {
    for (int i = 0; i < j->nrefs; i++) napi_delete_reference(env, j->refs[i]);
    free(j);
    return fail(env, bad);
  }
  j->a = a, j->w = w, j->w2 = w2, j->bias = bias, j->bias2 = bias2, j->rowScale = rs, j->out = out;
  j->outCols = outCols, j->outCol = outCol, j->ax = xt, j->axBytes = nxt * (wide ? 4 : 2), j->xReady = xReady != 0;
  j->M = M, j->N = N, j->K = K, j->Kp = Kp, j->mode = mode, j->threads = threads, j->portable = portable, j->wide = wide != 0, j->f16 = f16 != 0;
  napi_value promise, name;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, "bf16-matmul", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, settle, &j->done) != napi_ok) abort();
  if (!pool_submit(j)) {
    j->failed = 1;  // no pool thread could be made: settled here, rejected
    job_done(j);
  }
  return promise;
}

// rmsnorm(x, w, eps, out): each row of x [rows, H] over its root mean square (summed in float64), times w [H].
// Synchronous: a few milliseconds for a pack.
static napi_value rmsnorm(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *x, *w, *out;
  size_t nx, nw, no;
  double eps;
  int ok = argc == 4 && view(env, NULL, argv[0], napi_float32_array, &x, &nx, 0) && view(env, NULL, argv[1], napi_float32_array, &w, &nw, 0) &&
           napi_get_value_double(env, argv[2], &eps) == napi_ok && view(env, NULL, argv[3], napi_float32_array, &out, &no, 0);
  if (!ok || nw == 0 || nx % nw != 0 || no != nx) return fail(env, "rmsnorm: x [rows, H], w [H], eps, out [rows, H] expected");
  const float *xs = x, *ws = w;
  float *os = out;
  for (size_t r = 0; r < nx / nw; r++) {
    const float *row = xs + r * nw;
    double ss = 0;
    for (size_t k = 0; k < nw; k++) ss += (double)row[k] * row[k];
    const float inv = (float)(1.0 / sqrt(ss / (double)nw + eps));
    for (size_t k = 0; k < nw; k++) os[r * nw + k] = row[k] * inv * ws[k];
  }
  return NULL;
}

static napi_value supported(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_get_boolean(env, has_bf16(), &v);
  return v;
}

static napi_value supportedWide(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_get_boolean(env, has_wide(), &v);
  return v;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_value f;
  napi_create_function(env, "matmul", NAPI_AUTO_LENGTH, matmul, NULL, &f);
  napi_set_named_property(env, exports, "matmul", f);
  napi_create_function(env, "rmsnorm", NAPI_AUTO_LENGTH, rmsnorm, NULL, &f);
  napi_set_named_property(env, exports, "rmsnorm", f);
  napi_create_function(env, "supported", NAPI_AUTO_LENGTH, supported, NULL, &f);
  napi_set_named_property(env, exports, "supported", f);
  napi_create_function(env, "supportedWide", NAPI_AUTO_LENGTH, supportedWide, NULL, &f);
  napi_set_named_property(env, exports, "supportedWide", f);
  return exports;
}
