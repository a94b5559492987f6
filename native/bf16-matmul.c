// The forward pass's bf16 projections: y = x W^T (+ b) with W the model's bf16 [N, K] rows as stored, x float32
// rounded to bf16 (round to nearest even) and every product summed in float32. On CPUs with AVX512-BF16 the sums
// are vdpbf16ps (two products per lane per instruction, twice fp32 FMA's rate); elsewhere, and when asked (tests),
// a portable loop computes the same products in float32 (its sums round apart in the last bits).
//
// Wide (the fp32 pass on bf16 weights): x kept float32 and each bf16 weight widened to float32 (exact), so every
// product is float32's and only the order of the sums differs from onnxruntime's Gemm. Each output is one fused
// multiply-add chain over k in order (acc = fma(x[m][k], w[n][k], acc) from 0), whatever M, the tiling or the
// threads, so the AVX-512F kernel (each weight broadcast against 80 rows of x at once, the weights widened a block of
// rows at a time into a buffer that stays in L2, or in registers where x is one tile: no float32 copy of a layer is
// made) and the portable loop (fmaf) give the same sums (mode 2's silu differs: a polynomial exp in the AVX-512
// kernel, expf in the portable one), and a prompt the same bits alone or packed.
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
//
// attention(q, k, v, cos, sin, qNorm, kNorm, eps, segs, nH, nKV, D, window, ctx, threads, portable) -> Promise<void>:
// the attention between a layer's projections (what onnxruntime's attention core graph computed for the native
// pass): per prompt (segs: [start, length] rows of the pack) and key/value head, qwen3's per-head RMSNorm where
// given, RoPE, causal softmax attention (a sliding window where window > 0) over the prompt's own rows, the
// query heads of a group sharing their key/value head. Float32 throughout, every sum in a fixed order (each score a
// chain of fused multiply-adds over d, 16 keys at a time; the softmax's sum in float64), so a prompt gets the same
// bits alone or packed and the AVX-512 build of the loop and the portable one agree.
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
#define NB_WIDE 64   // rows of W per widened block
#define MT 80        // rows of x per wide tile: five vectors of 16, each weight broadcast against all of them
#define NRW 4        // rows of W per wide tile (20 sums in registers, 5 of x, 1 broadcast)
#define KPW 2048     // values of k per widened pack (NB_WIDE rows: 512 KiB, in L2; each row read in one run)
#define KCW 128      // values of k per wide tile pass (x's 80 rows: 40 KiB, in L1)
#define DIRECT_TILES 1  // x of at most this many wide tiles takes W's bf16 rows as stored (tile_wbf), more a widened pack
// ...and of more than this many rows: with one or two vectors of x a row, widening W's values in registers for one or
// two products each cost more than widening them once into the pack (a one-prompt pass of 16 rows 0.88x, of 32
// rows 0.93x, TinyLlama's shape; equal from 64). The same sums either way.
#define DIRECT_MIN_ROWS 32
#define DIRECT_BLOCK 512  // most rows of W per block there (its sums [rows, 80] in L2: no pack beside them)
#define NB 64    // rows of W per block (NB * KC * 2 = 256 KiB): the block stays in L2

// The attention's arguments (a job of kind JOB_ATTENTION).
typedef struct Attn {
  const float *q, *k, *v, *cos, *sin, *qn, *kn;
  float *ctx;
  const int32_t *segs;
  int nseg, nH, nKV, D, window;
  float eps;
} Attn;

enum { JOB_MATMUL, JOB_ATTENTION };

typedef struct Job {
  int kind;
  Attn at;
  const float *a;
  const uint16_t *w, *w2;
  const float *bias, *bias2, *rowScale;
  float *out;
  int M, N, K, Kp, mode, threads, portable, wide, f16;  // f16: w and w2 hold IEEE halves (wide only)
  int outCols, outCol;  // out's row length, and where y's columns start in it
  int xReady, xOwned;   // x's tiles already in ax (the caller's xTiles); ax is the pool's (not the caller's)
  // x in tiles, zero past M and K: bf16 [M/MR][Kp/32][MR][32] (a tile's loads run in order), or (wide) float32
  // [M/MT][Kp][MT] (a value of k across 80 rows: five loads).
  void *ax;
  size_t axBytes;
  pthread_barrier_t barrier;
  napi_deferred deferred;
  napi_threadsafe_function done;  // resolves the promise on the JavaScript thread
  struct Job *next;  // the pool's queue
  unsigned long seq;  // its place in the queue (from 1)
  int passed;         // pool threads done with it (their part run, or none to run)
  napi_ref refs[10];
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

// The bf16 tile's sums, portably: each product of two bf16 values is exact in float32, summed in float32 (in 16
// lanes, then across them: the AVX512-BF16 kernel's sums round apart in the last bits).
static void tile_portable(const uint16_t *x, int mr, const uint16_t *w, int ws, int nr, int k0, int k1, int kEnd, float *acc) {
  if (k1 > kEnd) k1 = kEnd;
  for (int i = 0; i < mr; i++)
    for (int j = 0; j < nr; j++) {
      const uint16_t *wj = w + j * ws;
      float lanes[16] = {0};
      for (int k = k0; k < k1; k += 16)
        for (int l = 0; l < 16 && k + l < k1; l++) {
          const int kk = k + l;
          lanes[l] += from_bf16(x[(size_t)(kk / 32) * 32 * MR + i * 32 + kk % 32]) * from_bf16(wj[kk]);
        }
      float s = 0;
      for (int l = 0; l < 16; l++) s += lanes[l];
      acc[i * NR + j] = s;
    }
}

// ------------------------------------------------------------------------------------------------ wide

// Rows [0, rows) of W, values [k0, k0 + kp), widened to float32 (bf16: shifted up, f16: vcvtph2ps; both exact) into
// dst [ceil(rows / NRW) * NRW][kp], the rows past `rows` zero (their sums unused). Row by row: each row's values
// are one run in memory, which the prefetcher follows (64 rows a few values at a time left it behind).
__attribute__((target("avx512f"))) static void pack_rows(const uint16_t *w, int ws, int rows, int k0, int kp, int f16, float *dst) {
  const int padded = (rows + NRW - 1) / NRW * NRW;
  for (int r = 0; r < padded; r++) {
    float *d = dst + (size_t)r * kp;
    if (r >= rows) {
      memset(d, 0, sizeof(float) * kp);
      continue;
    }
    const uint16_t *src = w + (size_t)r * ws + k0;
    int k = 0;
    for (; k + 16 <= kp; k += 16) {
      const __m256i h = _mm256_loadu_si256((const __m256i *)(src + k));
      _mm512_storeu_ps(d + k, f16 ? _mm512_cvtph_ps(h) : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
    for (; k < kp; k++) d[k] = f16 ? from_f16(src[k]) : from_bf16(src[k]);
  }
}

// st[j][v * 16 + l] (+)= sum over k < kc of x[k][v * 16 + l] * w[j][k], one FMA chain per sum in order of k: NRW
// rows of W (widened, rows `ws` apart) against MV vectors of x's 80-row tile (x[k] 80 values apart). `first`: the
// sums start from zero, else from st (a previous pass over k left them there: stored and loaded exactly).
#define TILE_WIDE(MV)                                                                                                    \
  __attribute__((target("avx512f"))) static void tile_wide##MV(const float *x, const float *w, int ws, int kc, float *st, int ss, int first) { \
    __m512 c[NRW][MV];                                                                                                 \
    for (int j = 0; j < NRW; j++)                                                                                      \
      for (int v = 0; v < MV; v++) c[j][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(st + (size_t)j * ss + v * 16); \
    for (int k = 0; k < kc; k++) {                                                                                     \
      __m512 a[MV];                                                                                                    \
      for (int v = 0; v < MV; v++) {                                                                                   \
        a[v] = _mm512_loadu_ps(x + (size_t)k * MT + v * 16);                                                           \
        __asm__("" : "+v"(a[v])); /* in a register: folded into each FMA, x was loaded NRW times (load-bound) */       \
      }                                                                                                                \
      for (int j = 0; j < NRW; j++) {                                                                                  \
        const __m512 b = _mm512_set1_ps(w[(size_t)j * ws + k]);                                                        \
        for (int v = 0; v < MV; v++) c[j][v] = _mm512_fmadd_ps(a[v], b, c[j][v]);                                      \
      }                                                                                                                \
    }                                                                                                                  \
    for (int j = 0; j < NRW; j++)                                                                                      \
      for (int v = 0; v < MV; v++) _mm512_storeu_ps(st + (size_t)j * ss + v * 16, c[j][v]);                            \
  }
TILE_WIDE(1)
TILE_WIDE(2)
TILE_WIDE(3)
TILE_WIDE(4)
TILE_WIDE(5)

// The same chains with W's bf16 rows read as stored (no widened pack): two values of a row broadcast at once and
// widened in registers (shifted, masked; exact), the products and their order those of tile_wide. For x of one
// tile (a one-prompt edit's pass), which a widened block would serve once: the pack's stores and loads were a sixth
// of that pass's kernel time (2 tiles: even; more: the pack wins). `rows`: W's rows there (< NRW in a block's last
// group: the last one read again, its sums unused).
#define TILE_WIDE_BF16(MV)                                                                                               \
  __attribute__((target("avx512f,avx512bw"))) static void tile_wbf##MV(const float *x, const uint16_t *w, int ws, int rows, int kc, float *st, int ss, int first) { \
    __m512 c[NRW][MV];                                                                                                 \
    const uint16_t *r[NRW];                                                                                            \
    for (int j = 0; j < NRW; j++) r[j] = w + (size_t)(j < rows ? j : rows - 1) * ws;                                   \
    for (int j = 0; j < NRW; j++)                                                                                      \
      for (int v = 0; v < MV; v++) c[j][v] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(st + (size_t)j * ss + v * 16); \
    int k = 0;                                                                                                         \
    for (; k + 2 <= kc; k += 2) {                                                                                      \
      __m512i p[NRW];                                                                                                  \
      for (int j = 0; j < NRW; j++) {                                                                                  \
        uint32_t u;                                                                                                    \
        memcpy(&u, r[j] + k, sizeof u); /* w[k] in the low half, w[k + 1] in the high one */                          \
        p[j] = _mm512_set1_epi32((int)u);                                                                              \
      }                                                                                                                \
      for (int h = 0; h < 2; h++) {                                                                                    \
        __m512 a[MV];                                                                                                  \
        for (int v = 0; v < MV; v++) {                                                                                 \
          a[v] = _mm512_loadu_ps(x + (size_t)(k + h) * MT + v * 16);                                                   \
          __asm__("" : "+v"(a[v]));                                                                                    \
        }                                                                                                              \
        for (int j = 0; j < NRW; j++) {                                                                                \
          /* The high half kept by a mask register, not an AND with a constant: that vector was the one register */   \
          /* too many (one sum was stored and loaded back in every step's chain; 7B edit 0.98x). */                     \
          const __m512 b = _mm512_castsi512_ps(h ? _mm512_maskz_mov_epi16(0xaaaaaaaau, p[j]) : _mm512_slli_epi32(p[j], 16)); \
          for (int v = 0; v < MV; v++) c[j][v] = _mm512_fmadd_ps(a[v], b, c[j][v]);                                    \
        }                                                                                                              \
      }                                                                                                                \
    }                                                                                                                  \
    for (; k < kc; k++) {                                                                                              \
      for (int j = 0; j < NRW; j++) {                                                                                  \
        const __m512 b = _mm512_set1_ps(from_bf16(r[j][k]));                                                           \
        for (int v = 0; v < MV; v++) c[j][v] = _mm512_fmadd_ps(_mm512_loadu_ps(x + (size_t)k * MT + v * 16), b, c[j][v]); \
      }                                                                                                                \
    }                                                                                                                  \
    for (int j = 0; j < NRW; j++)                                                                                      \
      for (int v = 0; v < MV; v++) _mm512_storeu_ps(st + (size_t)j * ss + v * 16, c[j][v]);                            \
  }
TILE_WIDE_BF16(1)
TILE_WIDE_BF16(2)
TILE_WIDE_BF16(3)
TILE_WIDE_BF16(4)
TILE_WIDE_BF16(5)

static void tile_wbf(int mv, const float *x, const uint16_t *w, int ws, int rows, int kc, float *st, int ss, int first) {
  switch (mv) {
    case 1: tile_wbf1(x, w, ws, rows, kc, st, ss, first); break;
    case 2: tile_wbf2(x, w, ws, rows, kc, st, ss, first); break;
    case 3: tile_wbf3(x, w, ws, rows, kc, st, ss, first); break;
    case 4: tile_wbf4(x, w, ws, rows, kc, st, ss, first); break;
    default: tile_wbf5(x, w, ws, rows, kc, st, ss, first); break;
  }
}

static void tile_wide(int mv, const float *x, const float *w, int ws, int kc, float *st, int ss, int first) {
  switch (mv) {
    case 1: tile_wide1(x, w, ws, kc, st, ss, first); break;
    case 2: tile_wide2(x, w, ws, kc, st, ss, first); break;
    case 3: tile_wide3(x, w, ws, kc, st, ss, first); break;
    case 4: tile_wide4(x, w, ws, kc, st, ss, first); break;
    default: tile_wide5(x, w, ws, kc, st, ss, first); break;
  }
}

// The same chains, portably: s[m][n] = fmaf over k in order (fmaf rounds once, as vfmadd231ps does), so both
// kernels give the same sums. x in its wide tiles, w the block's `width` rows.
static void wide_portable(const float *xt, int M, int Kp, int K, const uint16_t *w, int f16, int width, float *s) {
  for (int m = 0; m < M; m++) {
    const float *x = xt + (size_t)(m / MT) * Kp * MT + m % MT;
    for (int n = 0; n < width; n++) {
      const uint16_t *wn = w + (size_t)n * K;
      float acc = 0.0f;
      for (int k = 0; k < K; k++) acc = fmaf(x[(size_t)k * MT], f16 ? from_f16(wn[k]) : from_bf16(wn[k]), acc);
      s[(size_t)m * width + n] = acc;
    }
  }
}

// Rows [t * MT, t * MT + MT) of x into wide tile t ([Kp][MT]), zero past M and K; 64 values of k at a time, so the
// tile's lines being written stay in L1.
static void to_wide_tile(const float *a, int M, int K, int Kp, int t, float *dst) {
  for (int k0 = 0; k0 < Kp; k0 += 64) {
    const int k1 = k0 + 64 < Kp ? k0 + 64 : Kp;
    for (int i = 0; i < MT; i++) {
      const int m = t * MT + i;
      if (m >= M) {
        for (int k = k0; k < k1; k++) dst[(size_t)k * MT + i] = 0.0f;
        continue;
      }
      const float *row = a + (size_t)m * K;
      for (int k = k0; k < k1; k++) dst[(size_t)k * MT + i] = k < K ? row[k] : 0.0f;
    }
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

// A block's outputs from its sums s [M, width] (and s2, mode 2): stored, added in scaled, or silu(y) * y2.
static void finish_block(Job *j, int nb, int width, const float *scratch, const float *scratch2) {
  for (int m = 0; m < j->M; m++) {
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

// One block of W's rows [nb, nbEnd) (at most NB), bf16: K in passes of KC, x in tiles of MR rows.
static void run_block(Job *j, int nb, int nbEnd, float *scratch, float *scratch2) {
  const int M = j->M, K = j->K, Kp = j->Kp, width = nbEnd - nb;
  float acc[MR * NR];
  for (int pass = 0; pass < (j->w2 ? 2 : 1); pass++) {
    const uint16_t *w = pass ? j->w2 : j->w;
    float *s = pass ? scratch2 : scratch;  // [M, width]
    for (int k0 = 0; k0 < Kp; k0 += KC) {
      const int k1 = k0 + KC < Kp ? k0 + KC : Kp;
      for (int m = 0; m < M; m += MR) {
        const int mr = M - m < MR ? M - m : MR;
        for (int n = nb; n < nbEnd; n += NR) {
          const int nr = nbEnd - n < NR ? nbEnd - n : NR;
          const uint16_t *xt = (const uint16_t *)j->ax + (size_t)m * Kp;  // the tile's first value in x
          if (j->portable) tile_portable(xt, mr, w + (size_t)n * K, K, nr, k0, k1, K, acc);
          else tile_bf16(xt, mr, w + (size_t)n * K, K, nr, k0, k1, K, acc);
          for (int i = 0; i < mr; i++)
            for (int c = 0; c < nr; c++) {
              float *d = s + (size_t)(m + i) * width + (n - nb) + c;
              *d = k0 == 0 ? acc[i * NR + c] : *d + acc[i * NR + c];
            }
        }
      }
    }
  }
  finish_block(j, nb, width, scratch, scratch2);
}

// Whether a wide job takes W's bf16 rows as stored (tile_wbf): one tile of x, bf16 weights, the AVX-512 kernel.
static int direct(const Job *j) { return j->wide && !j->f16 && !j->portable && j->M > DIRECT_MIN_ROWS && (j->M + MT - 1) / MT <= DIRECT_TILES; }

// Rows of W per block of a wide job. Direct: as many as evenly splits the rows among the threads, up to DIRECT_BLOCK,
// so each pass's 128 values of x's tile, in L1, serve more rows of W: with 64-row blocks x's whole tile was read
// again every 64 rows, from L3 once past L2's size (a 7B down_proj's K of 14336: 4.6 MB; 257 against 311 GFLOP/s).
static int wide_block_rows(const Job *j) {
  if (!direct(j)) return NB_WIDE;
  const int t = j->threads > 0 ? j->threads : 1, blocks = t * ((j->N + t * DIRECT_BLOCK - 1) / (t * DIRECT_BLOCK));
  const int r = (j->N + blocks - 1) / blocks;
  return (r + NB_WIDE - 1) / NB_WIDE * NB_WIDE;
}

// The same for wide products: per pack of KPW values of k, the block's rows widened (pack_rows), then per KCW
// values, per tile of x's 80 rows, per NRW rows of W, one tile's sums carried in st [width, MTs] (transposed:
// a sum's 16 rows of x side by side), put back as s [M, width] for finish_block. `packed`: NB_WIDE * KPW floats.
static void run_block_wide(Job *j, int nb, int nbEnd, float *scratch, float *scratch2, float *st, float *packed) {
  const int M = j->M, K = j->K, Kp = j->Kp, width = nbEnd - nb, tiles = (M + MT - 1) / MT, MTs = tiles * MT;
  for (int pass = 0; pass < (j->w2 ? 2 : 1); pass++) {
    const uint16_t *w = (pass ? j->w2 : j->w) + (size_t)nb * K;
    float *s = pass ? scratch2 : scratch;  // [M, width]
    if (j->portable) {
      wide_portable((const float *)j->ax, M, Kp, K, w, j->f16, width, s);
      continue;
    }
    if (direct(j)) {
      for (int k0 = 0; k0 < K; k0 += KCW) {
        const int kc = K - k0 < KCW ? K - k0 : KCW;
        for (int t = 0; t < tiles; t++) {
          const int rows = M - t * MT < MT ? M - t * MT : MT, mv = (rows + 15) / 16;
          const float *x = (const float *)j->ax + ((size_t)t * Kp + k0) * MT;
          for (int g = 0; g < width; g += NRW) tile_wbf(mv, x, w + (size_t)g * K + k0, K, width - g, kc, st + (size_t)g * MTs + t * MT, MTs, k0 == 0);
        }
      }
    } else for (int p0 = 0; p0 < K; p0 += KPW) {
      const int kp = K - p0 < KPW ? K - p0 : KPW;
      pack_rows(w, K, width, p0, kp, j->f16, packed);
      for (int k0 = p0; k0 < p0 + kp; k0 += KCW) {
        const int kc = p0 + kp - k0 < KCW ? p0 + kp - k0 : KCW;
        for (int t = 0; t < tiles; t++) {
          const int rows = M - t * MT < MT ? M - t * MT : MT, mv = (rows + 15) / 16;
          const float *x = (const float *)j->ax + ((size_t)t * Kp + k0) * MT;
          for (int g = 0; g < width; g += NRW) tile_wide(mv, x, packed + (size_t)g * kp + (k0 - p0), kp, kc, st + (size_t)g * MTs + t * MT, MTs, k0 == 0);
        }
      }
    }
    for (int m = 0; m < M; m++)
      for (int c = 0; c < width; c++) s[(size_t)m * width + c] = st[(size_t)c * MTs + m];
  }
  finish_block(j, nb, width, scratch, scratch2);
}

// The attention's loops below are compiled twice (AVX-512 and portable) from one body: fused multiply-adds only where
// written (fmaf), never contracted by the compiler, so both builds round alike.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#define AI inline __attribute__((always_inline))

// e^x in float32 (|error| ~1 ulp over the softmax's range, x <= 0): 2^n * p(r), r = x - n ln2, p degree 6.
static AI float exp_lane(float x) {
  x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = fmaf(-n, 0.693145752f, x);
  r = fmaf(-n, 1.42860677e-6f, r);
  float p = 1.38888889e-3f;
  p = fmaf(p, r, 8.33333333e-3f);
  p = fmaf(p, r, 4.16666667e-2f);
  p = fmaf(p, r, 1.66666667e-1f);
  p = fmaf(p, r, 0.5f);
  p = fmaf(p, r, 1.0f);
  p = fmaf(p, r, 1.0f);
  const uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
  float s;
  memcpy(&s, &bits, 4);
  return p * s;
}

// One head's row through qwen3's RMSNorm (when w is given; sum in float64) and RoPE at one position's cos/sin.
static AI void rope_row(const float *x, const float *w, float eps, const float *cos, const float *sin, int D, float *out) {
  float tmp[512];
  const float *src = x;
  if (w) {
    double ss = 0;
    for (int d = 0; d < D; d++) ss += (double)x[d] * x[d];
    const float rms = (float)sqrt(ss / D + eps);
    for (int d = 0; d < D; d++) tmp[d] = x[d] / rms * w[d];
    src = tmp;
  }
  const int h = D / 2;
  // x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
  for (int d = 0; d < h; d++) out[d] = fmaf(src[d], cos[d], -src[d + h] * sin[d]);
  for (int d = h; d < D; d++) out[d] = fmaf(src[d], cos[d], src[d - h] * sin[d]);
}

// One prompt's attention through one key/value head (its group of query heads). kt: the prompt's keys through RoPE,
// transposed [D][lp] (lp: its length rounded up to 16, zero past it); p: [lp] scores.
static AI void attn_item_body(const Attn *a, int seg, int h, float *kt, float *p) {
  const int start = a->segs[2 * seg], len = a->segs[2 * seg + 1], D = a->D, g = a->nH / a->nKV, lp = (len + 15) / 16 * 16;
  const size_t qDim = (size_t)a->nH * D, kvDim = (size_t)a->nKV * D;
  const float scale = 1.0f / sqrtf((float)D);
  float qr[512], acc[512];
  for (int t = 0; t < lp; t++) {
    if (t < len) rope_row(a->k + (size_t)(start + t) * kvDim + (size_t)h * D, a->kn, a->eps, a->cos + (size_t)(start + t) * D, a->sin + (size_t)(start + t) * D, D, qr);
    for (int d = 0; d < D; d++) kt[(size_t)d * lp + t] = t < len ? qr[d] : 0.0f;
  }
  for (int qh = h * g; qh < (h + 1) * g; qh++) {
    for (int i = 0; i < len; i++) {
      const size_t row = (size_t)(start + i);
      rope_row(a->q + row * qDim + (size_t)qh * D, a->qn, a->eps, a->cos + row * D, a->sin + row * D, D, qr);
      const int lo = a->window > 0 && i - a->window + 1 > 0 ? i - a->window + 1 : 0;
      // Scores 16 keys at a time, each one chain of fused multiply-adds over d in order.
      for (int jb = lo / 16 * 16; jb <= i; jb += 16) {
        float s[16] = {0};
        for (int d = 0; d < D; d++) {
          const float qd = qr[d], *k = kt + (size_t)d * lp + jb;
          for (int l = 0; l < 16; l++) s[l] = fmaf(qd, k[l], s[l]);
        }
        for (int l = 0; l < 16; l++) p[jb + l] = s[l] * scale;
      }
      float mx = -INFINITY;
      for (int j = lo; j <= i; j++) mx = p[j] > mx ? p[j] : mx;
      for (int j = lo; j <= i; j++) p[j] = exp_lane(p[j] - mx);
      double sum = 0;
      for (int j = lo; j <= i; j++) sum += p[j];
      const float inv = (float)(1.0 / sum);
      for (int d = 0; d < D; d++) acc[d] = 0;
      for (int j = lo; j <= i; j++) {
        const float pj = p[j] * inv;
        const float *vj = a->v + (size_t)(start + j) * kvDim + (size_t)h * D;
        for (int d = 0; d < D; d++) acc[d] = fmaf(pj, vj[d], acc[d]);
      }
      memcpy(a->ctx + row * qDim + (size_t)qh * D, acc, sizeof(float) * D);
    }
  }
}

__attribute__((target("avx512f,fma"))) static void attn_item_avx(const Attn *a, int seg, int h, float *kt, float *p) { attn_item_body(a, seg, h, kt, p); }
static void attn_item_portable(const Attn *a, int seg, int h, float *kt, float *p) { attn_item_body(a, seg, h, kt, p); }
#undef AI
#pragma GCC pop_options

// Thread t's part of an attention job: the (prompt, key/value head) pairs it claims.
static void attention_part(Job *j) {
  const Attn *a = &j->at;
  int longest = 0;
  for (int s = 0; s < a->nseg; s++) longest = a->segs[2 * s + 1] > longest ? a->segs[2 * s + 1] : longest;
  const size_t lp = (size_t)(longest + 15) / 16 * 16;
  float *kr = malloc(sizeof(float) * (lp * a->D + lp));
  if (!kr) {
    j->failed = 1;
    return;
  }
  const int items = a->nseg * a->nKV;
  for (int it; (it = __atomic_fetch_add(&j->nextBlock, 1, __ATOMIC_RELAXED)) < items;) {
    if (j->portable) attn_item_portable(a, it / a->nKV, it % a->nKV, kr, kr + lp * a->D);
    else attn_item_avx(a, it / a->nKV, it % a->nKV, kr, kr + lp * a->D);
  }
  free(kr);
}

// Thread t's part of a job: the tiles of x it claims (to bf16, or wide), then (once every thread has converted) the
// blocks of W's rows it claims.
static void thread_part(Job *j, int t) {
  if (j->kind == JOB_ATTENTION) {
    attention_part(j);
    return;
  }
  // x into tiles, each claimed by one thread, then every thread waits for the whole of it (unless they are there).
  const int rowsPerTile = j->wide ? MT : MR, tiles = j->xReady ? 0 : (j->M + rowsPerTile - 1) / rowsPerTile;
  for (int tt; (tt = __atomic_fetch_add(&j->nextTile, 1, __ATOMIC_RELAXED)) < tiles;) {
    if (j->wide) {
      to_wide_tile(j->a, j->M, j->K, j->Kp, tt, (float *)j->ax + (size_t)tt * j->Kp * MT);
      continue;
    }
    uint16_t *dst = (uint16_t *)j->ax + (size_t)tt * MR * j->Kp;
    for (int i = 0; i < MR; i++) {
      const int m = tt * MR + i;
      uint16_t *row = dst + (size_t)i * 32;
      if (m >= j->M) {
        for (int k = 0; k < j->Kp; k += 32) memset(row + (size_t)k * MR, 0, 32 * sizeof(uint16_t));
        continue;
      }
      to_bf16_row(j->a + (size_t)m * j->K, j->K, j->Kp, row, j->portable);
    }
  }
  if (!j->xReady) pthread_barrier_wait(&j->barrier);
  // W's rows in blocks of NB (NB_WIDE), claimed one at a time; a block's sums do not depend on who claims it.
  const int nbs = j->wide ? wide_block_rows(j) : NB, blocks = (j->N + nbs - 1) / nbs;
  // Threads past the number of blocks take none (the others claim them all): no scratch for them.
  if (t < blocks) {
    // The products' sums [M, NB] (twice with w2); for wide also their transposed tiles [NB_WIDE, MTs] and a block
    // of W widened (NB_WIDE rows of KPW).
    const size_t MTs = (size_t)(j->M + MT - 1) / MT * MT;
    const size_t sums = (size_t)j->M * nbs * (j->w2 ? 2 : 1), st = j->wide ? nbs * MTs : 0, pack = j->wide && !direct(j) ? (size_t)NB_WIDE * KPW : 0;
    // Kept by the pool thread from job to job (grown, never shrunk): a fresh buffer per product is fresh pages,
    // which on the VMs measured cost about 2.5 ms per MB to fault in once the host has taken freed memory back.
    static __thread float *kept;
    static __thread size_t keptFloats;
    const size_t want = sums + st + pack + 32;
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
    float *sums2 = j->w2 ? scratch + (size_t)j->M * nbs : NULL;
    // 64-byte aligned: whole-line loads and stores
    float *tiled = (float *)(((uintptr_t)(scratch + sums) + 63) & ~(uintptr_t)63), *packed = (float *)(((uintptr_t)(tiled + st) + 63) & ~(uintptr_t)63);
    for (int b; (b = __atomic_fetch_add(&j->nextBlock, 1, __ATOMIC_RELAXED)) < blocks;) {
      const int n0 = b * nbs, n1 = n0 + nbs < j->N ? n0 + nbs : j->N;
      if (j->wide) run_block_wide(j, n0, n1, scratch, sums2, tiled, packed);
      else run_block(j, n0, n1, scratch, sums2);
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
    if (t < j->threads && (j->ax || j->kind == JOB_ATTENTION)) thread_part(j, t);
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

// The bytes of x's tiles: whole tiles of MR rows (wide: MT), K padded to Kp.
static size_t tiles_bytes(int wide, int M, int Kp) { return wide ? sizeof(float) * (size_t)((M + MT - 1) / MT * MT) * Kp : sizeof(uint16_t) * (size_t)((M + MR - 1) / MR * MR) * Kp; }

// Queues a job (its x buffer, unless the caller gave one, allocated here; the pool made or grown first).
static int pool_submit(Job *j) {
  if (j->kind == JOB_MATMUL && !j->ax) {
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
  if (j->kind == JOB_ATTENTION) {
    // no x tiles, no barrier: each (prompt, head) pair is whole on its own
  } else if (!j->ax) j->failed = 1;
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
      napi_create_string_utf8(env, "native kernel: out of memory, or no thread could be made", NAPI_AUTO_LENGTH, &msg);
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

static napi_value submit(napi_env env, Job *j);

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
                    : (xt && nxt * (wide ? 4 : 2) < tiles_bytes(wide, M, Kp)) ? "matmul: xTiles must hold ceil(M/6)*6 rows (wide: ceil(M/80)*80) of K rounded up to 32"
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
  return submit(env, j);
}

// The promise of a job made by a call, once queued (settled by the pool: see settle).
static napi_value submit(napi_env env, Job *j) {
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

static napi_value attention(napi_env env, napi_callback_info info) {
  size_t argc = 16;
  napi_value argv[16];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 16) return fail(env, "attention: 16 arguments expected");
  int32_t nH, nKV, D, window, threads, portable;
  double eps;
  if (napi_get_value_double(env, argv[7], &eps) != napi_ok || napi_get_value_int32(env, argv[9], &nH) != napi_ok || napi_get_value_int32(env, argv[10], &nKV) != napi_ok ||
      napi_get_value_int32(env, argv[11], &D) != napi_ok || napi_get_value_int32(env, argv[12], &window) != napi_ok || napi_get_value_int32(env, argv[14], &threads) != napi_ok ||
      napi_get_value_int32(env, argv[15], &portable) != napi_ok)
    return fail(env, "attention: eps, nH, nKV, D, window, threads and portable must be numbers");
  if (nH < 1 || nKV < 1 || nH % nKV != 0 || D < 2 || D % 2 != 0 || D > 512 || window < 0) return fail(env, "attention: nH must be a multiple of nKV, D even and at most 512, window 0 or more");
  if (threads < 1 || threads > 64) return fail(env, "attention: threads must be 1..64");
  Job *j = calloc(1, sizeof(Job));
  if (!j) return fail(env, "attention: out of memory");
  j->kind = JOB_ATTENTION;
  Attn *a = &j->at;
  size_t nq, nk, nv, nc, ns, nqn, nkn, nseg, nctx;
  void *q, *k, *v, *cs, *sn, *qn, *kn, *segs, *ctx;
  int ok = view(env, j, argv[0], napi_float32_array, &q, &nq, 0) && view(env, j, argv[1], napi_float32_array, &k, &nk, 0) && view(env, j, argv[2], napi_float32_array, &v, &nv, 0) &&
           view(env, j, argv[3], napi_float32_array, &cs, &nc, 0) && view(env, j, argv[4], napi_float32_array, &sn, &ns, 0) && view(env, j, argv[5], napi_float32_array, &qn, &nqn, 1) &&
           view(env, j, argv[6], napi_float32_array, &kn, &nkn, 1) && view(env, j, argv[8], napi_int32_array, &segs, &nseg, 0) && view(env, j, argv[13], napi_float32_array, &ctx, &nctx, 0);
  const size_t T = nc / (size_t)D;
  const char *bad = !ok ? "attention: q, k, v, cos, sin, ctx: Float32Array; qNorm, kNorm: Float32Array or null; segs: Int32Array"
                    : nc != T * D || ns != nc ? "attention: cos and sin must hold T*D values"
                    : nq != T * nH * D || nctx != nq ? "attention: q and ctx must hold T*nH*D values"
                    : nk != T * nKV * D || nv != nk ? "attention: k and v must hold T*nKV*D values"
                    : (qn && nqn != (size_t)D) || (kn && nkn != (size_t)D) ? "attention: qNorm and kNorm must hold D values"
                    : nseg % 2 != 0 ? "attention: segs holds [start, length] pairs"
                    : (!portable && !has_wide()) ? "attention: this CPU has no AVX-512"
                    : NULL;
  for (size_t s = 0; !bad && s < nseg; s += 2) {
    const int32_t st = ((int32_t *)segs)[s], len = ((int32_t *)segs)[s + 1];
    if (st < 0 || len < 1 || (size_t)st + (size_t)len > T) bad = "attention: each segment [start, length] must lie in the T rows";
  }
  if (bad) {
    for (int i = 0; i < j->nrefs; i++) napi_delete_reference(env, j->refs[i]);
    free(j);
    return fail(env, bad);
  }
  a->q = q, a->k = k, a->v = v, a->cos = cs, a->sin = sn, a->qn = qn, a->kn = kn, a->ctx = ctx, a->segs = segs;
  a->nseg = (int)(nseg / 2), a->nH = nH, a->nKV = nKV, a->D = D, a->window = window, a->eps = (float)eps;
  j->threads = threads, j->portable = portable;
  return submit(env, j);
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
  napi_create_function(env, "attention", NAPI_AUTO_LENGTH, attention, NULL, &f);
  napi_set_named_property(env, exports, "attention", f);
  napi_create_function(env, "rmsnorm", NAPI_AUTO_LENGTH, rmsnorm, NULL, &f);
  napi_set_named_property(env, exports, "rmsnorm", f);
  napi_create_function(env, "supported", NAPI_AUTO_LENGTH, supported, NULL, &f);
  napi_set_named_property(env, exports, "supported", f);
  napi_create_function(env, "supportedWide", NAPI_AUTO_LENGTH, supportedWide, NULL, &f);
  napi_set_named_property(env, exports, "supportedWide", f);
  return exports;
}
