// The noise's unit normals and their addition to expert weights, as a Node addon (built by scripts/build.mjs into
// build/normals.node): the same values as libs/gates/torch-rng.ts (mt19937 words, torch's AVX2 Box-Muller kernel
// of 16 words a block, every multiply-add fused as that kernel's is) and libs/safetensors/float-wasm.ts's noise
// (w + round(round(n) * scale), each step in float32 rounded to the weight's dtype), bit for bit. AVX-512 runs two
// blocks a vector, AVX2 with FMA one (the layout of torch's own kernel); the portable path (plain C with fmaf) runs
// everywhere and is what the tests hold the vector ones to.
#include <node_api.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>

// Every rounding below is written out: the compiler must not fuse a multiply and an add that the kernel keeps apart.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define MT_N 624
#define MT_M 397
#define MATRIX_A 0x9908b0dfu

/** Words from .. to-1 of a twist one at a time (the vector twists do their ragged ends here); word 623 takes word 0's low bits. */
static inline void twist_words(uint32_t *st, int from, int to) {
  for (int k = from; k < to; k++) {
    const uint32_t y = (st[k] & 0x80000000u) | (st[k + 1 < MT_N ? k + 1 : 0] & 0x7fffffffu);
    st[k] = st[k < MT_N - MT_M ? k + MT_M : k + MT_M - MT_N] ^ (y >> 1) ^ ((0u - (y & 1u)) & MATRIX_A);
  }
}

static void twist(uint32_t *st) {
  twist_words(st, 0, MT_N);
}

static inline uint32_t temper(uint32_t y) {
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

#define T512 __attribute__((target("avx512f")))
#define T256 __attribute__((target("avx2,fma")))

/** Which code runs: the plain C, AVX2 with FMA, or AVX-512. */
enum { PORTABLE = 1, AVX2 = 2, AVX512 = 3 };

// Constants of the AVX2 kernel (avx_mathfun.h), float32.
// Written as doubles rounded to float, as torch-rng.ts has them (a float literal rounds once, from the decimal).
static const float LOG_P[9] = {(float)7.0376836292e-2, (float)-1.151461031e-1, (float)1.167699874e-1, (float)-1.2420140846e-1, (float)1.4249322787e-1,
                               (float)-1.6668057665e-1, (float)2.0000714765e-1, (float)-2.4999993993e-1, (float)3.3333331174e-1};
#define LOG_Q1 ((float)-2.1219444e-4)
#define LOG_Q2 ((float)0.693359375)
#define SQRTHF ((float)0.707106781186547524)
#define DP1 ((float)-0.78515625)
#define DP2 ((float)-2.4187564849853515625e-4)
#define DP3 ((float)-3.77489497744594108e-8)
#define SIN_P0 ((float)-1.9515295891e-4)
#define SIN_P1 ((float)8.3321608736e-3)
#define SIN_P2 ((float)-1.6666654611e-1)
#define COS_P0 ((float)2.443315711809948e-5)
#define COS_P1 ((float)-1.388731625493765e-3)
#define COS_P2 ((float)4.166664568298827e-2)
#define FOPI ((float)1.27323954473516)
#define TWO_PI ((float)(2 * 3.14159265358979323846))
#define TWO_M24 (1.0f / 16777216.0f)

static inline float bits_f32(uint32_t b) {
  float f;
  memcpy(&f, &b, 4);
  return f;
}
static inline uint32_t f32_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, 4);
  return b;
}

/** One pair of the kernel from two 24-bit integers: the cos normal to *c, the sin normal to *s. */
static void pair(uint32_t k1, uint32_t k2, float *cOut, float *sOut) {
  // log(1 - u1), 1 - u1 = m 2^-24 (exact in float32), as x 2^e with x in [0.5, 1).
  const uint32_t mb = f32_bits((float)(int32_t)(0x1000000u - k1));
  int e = (int)(mb >> 23) - 150;
  float x = bits_f32((mb & 0x007fffffu) | 0x3f000000u);
  if (x < SQRTHF) {
    e -= 1;
    x = (x - 1.0f) + x;
  } else {
    x = x - 1.0f;
  }
  const float ef = (float)e;
  const float z = x * x;
  float y = fmaf(LOG_P[0], x, LOG_P[1]);
  for (int i = 2; i < 9; i++) y = fmaf(y, x, LOG_P[i]);
  y = y * x;
  y = fmaf(y, z, ef * LOG_Q1);
  y = y - z * 0.5f;
  const float lg = (x + y) + ef * LOG_Q2;
  const float radius = sqrtf(lg * -2.0f);

  const float theta = TWO_PI * ((float)k2 * TWO_M24);
  const int32_t j = ((int32_t)(theta * FOPI) + 1) & ~1;
  const float jf = (float)j;
  float r = fmaf(jf, DP1, theta);
  r = fmaf(jf, DP2, r);
  r = fmaf(jf, DP3, r);
  const float zz = r * r;
  float c = fmaf(COS_P0, zz, COS_P1);
  c = fmaf(c, zz, COS_P2);
  c = c * zz;
  c = fmaf(c, zz, -(zz * 0.5f));
  c = c + 1.0f;
  float s = fmaf(SIN_P0, zz, SIN_P1);
  s = fmaf(s, zz, SIN_P2);
  s = s * zz;
  s = fmaf(s, r, r);
  float sn = (j & 2) ? c : s;
  float cs = (j & 2) ? s : c;
  if (j & 4) sn = -sn;
  if (!((j - 2) & 4)) cs = -cs;
  // + 0: a -0 product becomes +0, as the kernel's fmadd(n, 1, 0) makes it.
  *cOut = radius * cs + 0.0f;
  *sOut = radius * sn + 0.0f;
}

static void blocks_portable(const uint32_t *w, float *out, size_t blocks) {
  for (size_t b = 0; b < blocks; b++, w += 16, out += 16)
    for (int i = 0; i < 8; i++) pair(w[i] & 0xffffffu, w[i + 8] & 0xffffffu, out + i, out + i + 8);
}

// temper512, twist512, pairs512: sixteen lanes, a pairs512 vector two blocks (lanes 0-7 the first's pairs).
#define WIDTH 512
#define LANES 16
#define TARGET T512
#define V __m512
#define VI __m512i
#define M __mmask16
#define LOADU(p) _mm512_loadu_si512(p)
#define STOREU(p, v) _mm512_storeu_si512((p), (v))
#define SET1 _mm512_set1_ps
#define SET1I _mm512_set1_epi32
#define ADD _mm512_add_ps
#define SUB _mm512_sub_ps
#define MUL _mm512_mul_ps
#define FMADD _mm512_fmadd_ps
#define FMSUB _mm512_fmsub_ps
#define SQRT _mm512_sqrt_ps
#define I2F _mm512_cvtepi32_ps
#define F2I_TRUNC _mm512_cvttps_epi32
#define AS_I _mm512_castps_si512
#define AS_F _mm512_castsi512_ps
#define ADDI _mm512_add_epi32
#define SUBI _mm512_sub_epi32
#define ANDI _mm512_and_si512
#define ORI _mm512_or_si512
#define XORI _mm512_xor_si512
#define SRLI _mm512_srli_epi32
#define SLLI _mm512_slli_epi32
#define LT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)
#define KEEP(m, x) _mm512_maskz_mov_ps((m), (x))
#define KEEPI(m, v) _mm512_maskz_mov_epi32((m), (v))
#define DEC(e, m) _mm512_mask_sub_epi32((e), (m), (e), _mm512_set1_epi32(1))
#define ANY_BIT(j, b) _mm512_test_epi32_mask((j), _mm512_set1_epi32(b))
#define NO_BIT(j, b) _mm512_testn_epi32_mask((j), _mm512_set1_epi32(b))
#define PICK(m, a, b) _mm512_mask_blend_ps((m), (a), (b))
#define NEG(m, v) _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(v), (m), _mm512_castps_si512(v), _mm512_set1_epi32((int)0x80000000)))
#include "normals-simd.h"

/** Two blocks a vector (lanes 0-7 the first block's pairs, 8-15 the second's), two vectors a step (independent chains side by side). */
T512 static void blocks512(const uint32_t *w, float *out, size_t blocks) {
  const __m512i low = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  const __m512i high = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const __m512i m24 = _mm512_set1_epi32(0xffffff);
  size_t b = 0;
  for (; b + 4 <= blocks; b += 4) {
    const __m512i a0 = _mm512_loadu_si512(w + b * 16), d0 = _mm512_loadu_si512(w + b * 16 + 16);
    const __m512i a1 = _mm512_loadu_si512(w + b * 16 + 32), d1 = _mm512_loadu_si512(w + b * 16 + 48);
    __m512 c0, s0, c1, s1;
    pairs512(_mm512_and_si512(_mm512_permutex2var_epi32(a0, low, d0), m24), _mm512_and_si512(_mm512_permutex2var_epi32(a0, high, d0), m24), &c0, &s0);
    pairs512(_mm512_and_si512(_mm512_permutex2var_epi32(a1, low, d1), m24), _mm512_and_si512(_mm512_permutex2var_epi32(a1, high, d1), m24), &c1, &s1);
    _mm512_storeu_ps(out + b * 16, _mm512_permutex2var_ps(c0, low, s0));
    _mm512_storeu_ps(out + b * 16 + 16, _mm512_permutex2var_ps(c0, high, s0));
    _mm512_storeu_ps(out + b * 16 + 32, _mm512_permutex2var_ps(c1, low, s1));
    _mm512_storeu_ps(out + b * 16 + 48, _mm512_permutex2var_ps(c1, high, s1));
  }
  for (; b < blocks; b += 2) {
    const __m512i a = _mm512_loadu_si512(w + b * 16);
    // A lone last block is paired with itself; only its half is stored.
    const __m512i d = b + 1 < blocks ? _mm512_loadu_si512(w + b * 16 + 16) : a;
    __m512 c, s;
    pairs512(_mm512_and_si512(_mm512_permutex2var_epi32(a, low, d), m24), _mm512_and_si512(_mm512_permutex2var_epi32(a, high, d), m24), &c, &s);
    _mm512_storeu_ps(out + b * 16, _mm512_permutex2var_ps(c, low, s));
    if (b + 1 < blocks) _mm512_storeu_ps(out + b * 16 + 16, _mm512_permutex2var_ps(c, high, s));
  }
}

// temper256, twist256, pairs256: eight lanes, a pairs256 vector one block (8 pairs: k1 the first 8 words' 24 bits,
// k2 the last 8's), torch's own layout.
#define WIDTH 256
#define LANES 8
#define TARGET T256
#define V __m256
#define VI __m256i
#define M __m256i
#define LOADU(p) _mm256_loadu_si256((const __m256i *)(p))
#define STOREU(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define SET1 _mm256_set1_ps
#define SET1I _mm256_set1_epi32
#define ADD _mm256_add_ps
#define SUB _mm256_sub_ps
#define MUL _mm256_mul_ps
#define FMADD _mm256_fmadd_ps
#define FMSUB _mm256_fmsub_ps
#define SQRT _mm256_sqrt_ps
#define I2F _mm256_cvtepi32_ps
#define F2I_TRUNC _mm256_cvttps_epi32
#define AS_I _mm256_castps_si256
#define AS_F _mm256_castsi256_ps
#define ADDI _mm256_add_epi32
#define SUBI _mm256_sub_epi32
#define ANDI _mm256_and_si256
#define ORI _mm256_or_si256
#define XORI _mm256_xor_si256
#define SRLI _mm256_srli_epi32
#define SLLI _mm256_slli_epi32
// Masks are all-ones lanes.
#define LT(a, b) _mm256_castps_si256(_mm256_cmp_ps((a), (b), _CMP_LT_OQ))
#define KEEP(m, x) _mm256_and_ps(_mm256_castsi256_ps(m), (x))
#define KEEPI(m, v) _mm256_and_si256((m), (v))
#define DEC(e, m) _mm256_add_epi32((e), (m))
#define ANY_BIT(j, b) _mm256_cmpeq_epi32(_mm256_and_si256((j), _mm256_set1_epi32(b)), _mm256_set1_epi32(b))
#define NO_BIT(j, b) _mm256_cmpeq_epi32(_mm256_and_si256((j), _mm256_set1_epi32(b)), _mm256_setzero_si256())
#define PICK(m, a, b) _mm256_blendv_ps((a), (b), _mm256_castsi256_ps(m))
#define NEG(m, v) _mm256_xor_ps((v), _mm256_and_ps(_mm256_castsi256_ps(m), _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000))))
#include "normals-simd.h"

/** One block a vector, two a step (independent chains side by side). */
T256 static void blocks256(const uint32_t *w, float *out, size_t blocks) {
  const __m256i m24 = _mm256_set1_epi32(0xffffff);
  size_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    __m256 c0, s0, c1, s1;
    const uint32_t *w0 = w + b * 16, *w1 = w0 + 16;
    pairs256(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)w0), m24), _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(w0 + 8)), m24), &c0, &s0);
    pairs256(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)w1), m24), _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(w1 + 8)), m24), &c1, &s1);
    _mm256_storeu_ps(out + b * 16, c0);
    _mm256_storeu_ps(out + b * 16 + 8, s0);
    _mm256_storeu_ps(out + b * 16 + 16, c1);
    _mm256_storeu_ps(out + b * 16 + 24, s1);
  }
  if (b < blocks) {
    __m256 c, s;
    pairs256(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(w + b * 16)), m24), _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(w + b * 16 + 8)), m24), &c, &s);
    _mm256_storeu_ps(out + b * 16, c);
    _mm256_storeu_ps(out + b * 16 + 8, s);
  }
}

/** The next n words of the generator at (st, *pos), tempered, into w. */
static void words(uint32_t *st, int *pos, uint32_t *w, size_t n, int level) {
  int p = *pos;
  while (n > 0) {
    if (p == MT_N) {
      if (level == AVX512) twist512(st);
      else if (level == AVX2) twist256(st);
      else twist(st);
      p = 0;
    }
    const size_t k = n < (size_t)(MT_N - p) ? n : (size_t)(MT_N - p);
    if (level == AVX512) temper512(st + p, w, k);
    else if (level == AVX2) temper256(st + p, w, k);
    else
      for (size_t i = 0; i < k; i++) w[i] = temper(st[p + i]);
    p += (int)k;
    w += k;
    n -= k;
  }
  *pos = p;
}

/** The best code this CPU runs: AVX-512, AVX2 with FMA, or the plain C. */
static int best_level(void) {
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AVX2;
  return PORTABLE;
}

// ------------------------------------------------------------------------------------------ noise on weights

static inline uint32_t round_bf16_finite(uint32_t b) {
  return (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
}
static inline uint16_t to_bf16(uint32_t b) {
  if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
  return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

/** dtype 0: bfloat16 weights, 1: float32; n values of src (raw little-endian) plus noise into dst. */
static void apply_portable(int dtype, const uint8_t *src, const float *norm, uint8_t *dst, size_t n, float scale) {
  for (size_t i = 0; i < n; i++) {
    if (dtype == 0) {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      const float w = bits_f32((uint32_t)h << 16);
      const float p = bits_f32(round_bf16_finite(f32_bits(bits_f32(round_bf16_finite(f32_bits(norm[i]))) * scale)));
      const uint16_t o = to_bf16(f32_bits(w + p));
      memcpy(dst + 2 * i, &o, 2);
    } else {
      float w;
      memcpy(&w, src + 4 * i, 4);
      const float o = w + norm[i] * scale;
      memcpy(dst + 4 * i, &o, 4);
    }
  }
}

T512 static inline __m512i round_bf16_512(__m512i b) {
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  return _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb);
}

__attribute__((target("avx512f,avx512bw"))) static void apply512(int dtype, const uint8_t *src, const float *norm, uint8_t *dst, size_t n, float scale) {
  const __m512 sc = _mm512_set1_ps(scale);
  const __m512i top = _mm512_set1_epi32((int)0xffff0000);
  size_t i = 0;
  if (dtype == 0) {
    for (; i + 16 <= n; i += 16) {
      const __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + 2 * i))), 16);
      const __m512 nb = _mm512_castsi512_ps(_mm512_and_si512(round_bf16_512(_mm512_castps_si512(_mm512_loadu_ps(norm + i))), top));
      const __m512 p = _mm512_castsi512_ps(_mm512_and_si512(round_bf16_512(_mm512_castps_si512(_mm512_mul_ps(nb, sc))), top));
      const __m512i sum = _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(w), p));
      __m512i o = _mm512_srli_epi32(round_bf16_512(sum), 16);
      const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(sum, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
      o = _mm512_mask_or_epi32(o, nan, _mm512_srli_epi32(sum, 16), _mm512_set1_epi32(0x40));
      _mm256_storeu_si256((__m256i *)(dst + 2 * i), _mm512_cvtepi32_epi16(o));
    }
  } else {
    for (; i + 16 <= n; i += 16) {
      const __m512 w = _mm512_loadu_ps(src + 4 * i);
      _mm512_storeu_ps(dst + 4 * i, _mm512_add_ps(w, _mm512_mul_ps(_mm512_loadu_ps(norm + i), sc)));
    }
  }
  if (i < n) apply_portable(dtype, src + i * (dtype == 0 ? 2 : 4), norm + i, dst + i * (dtype == 0 ? 2 : 4), n - i, scale);
}

T256 static void apply256(int dtype, const uint8_t *src, const float *norm, uint8_t *dst, size_t n, float scale) {
  const __m256 sc = _mm256_set1_ps(scale);
  size_t i = 0;
  if (dtype == 0) {
    const __m256i top = _mm256_set1_epi32((int)0xffff0000), bias = _mm256_set1_epi32(0x7fff), lsb = _mm256_set1_epi32(1);
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000), quiet = _mm256_set1_epi32(0x40);
#define ROUND_BF16(b) _mm256_add_epi32(_mm256_add_epi32((b), bias), _mm256_and_si256(_mm256_srli_epi32((b), 16), lsb))
    for (; i + 8 <= n; i += 8) {
      const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * i))), 16);
      const __m256i nb = _mm256_and_si256(ROUND_BF16(_mm256_castps_si256(_mm256_loadu_ps(norm + i))), top);
      const __m256i p = _mm256_and_si256(ROUND_BF16(_mm256_castps_si256(_mm256_mul_ps(_mm256_castsi256_ps(nb), sc))), top);
      const __m256i sum = _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(w), _mm256_castsi256_ps(p)));
      const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(sum, abs), inf);
      const __m256i o = _mm256_blendv_epi8(_mm256_srli_epi32(ROUND_BF16(sum), 16), _mm256_or_si256(_mm256_srli_epi32(sum, 16), quiet), nan);
      // 32-bit lanes to 16 bits: the values fit, packus keeps them, the lane order fixed by the permute.
      const __m128i packed = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(o, o), 0x08));
      _mm_storeu_si128((__m128i *)(dst + 2 * i), packed);
    }
#undef ROUND_BF16
  } else {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps((float *)(dst + 4 * i), _mm256_add_ps(_mm256_loadu_ps((const float *)(src + 4 * i)), _mm256_mul_ps(_mm256_loadu_ps(norm + i), sc)));
  }
  if (i < n) apply_portable(dtype, src + i * (dtype == 0 ? 2 : 4), norm + i, dst + i * (dtype == 0 ? 2 : 4), n - i, scale);
}

// ------------------------------------------------------------------------------------------ Node interface

static napi_value fail(napi_env env, const char *message) {
  napi_throw_type_error(env, NULL, message);
  return NULL;
}

static int view(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *length) {
  napi_typedarray_type type;
  napi_value ab;
  size_t offset;
  return napi_get_typedarray_info(env, v, &type, length, data, &ab, &offset) == napi_ok && type == want;
}

/** The code to run: `kernel` 0 the best this CPU has, else that level (refused where the CPU lacks it); 0 on bad input. */
static int level_arg(napi_env env, napi_value v) {
  int32_t k = -1;
  if (napi_get_value_int32(env, v, &k) != napi_ok || k < 0 || k > AVX512) return 0;
  const int best = best_level();
  if (k == 0) return best;
  return k <= best ? k : 0;
}

#define WORDS_AT_ONCE 4096

/**
 * normals(state: Int32Array(624), pos, out: Float32Array, kernel) -> pos: out.length / 16 blocks of normals from
 * the generator's next words (state twisted in place as it goes); returns the new position in the state.
 */
static napi_value normals(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *st, *out;
  size_t ns, no;
  int32_t pos;
  if (argc != 4 || !view(env, argv[0], napi_int32_array, &st, &ns) || ns != MT_N || napi_get_value_int32(env, argv[1], &pos) != napi_ok ||
      pos < 0 || pos > MT_N || !view(env, argv[2], napi_float32_array, &out, &no) || no % 16 != 0)
    return fail(env, "normals: state Int32Array(624), position 0..624, out Float32Array of whole 16-value blocks, kernel expected");
  const int level = level_arg(env, argv[3]);
  if (!level) return fail(env, "normals: kernel 0 (best), 1 (portable), 2 (AVX2) or 3 (AVX-512), one this CPU has");
  uint32_t w[WORDS_AT_ONCE];
  int p = pos;
  for (size_t at = 0; at < no; at += WORDS_AT_ONCE) {
    const size_t n = no - at < WORDS_AT_ONCE ? no - at : WORDS_AT_ONCE;
    words(st, &p, w, n, level);
    if (level == AVX512) blocks512(w, (float *)out + at, n / 16);
    else if (level == AVX2) blocks256(w, (float *)out + at, n / 16);
    else blocks_portable(w, (float *)out + at, n / 16);
  }
  napi_value r;
  napi_create_int32(env, p, &r);
  return r;
}

/** twist(state: Int32Array(624), times, kernel): the state twisted `times` times (a skip of whole blocks). */
static napi_value twistTimes(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  void *st;
  size_t ns;
  double times;
  if (argc != 3 || !view(env, argv[0], napi_int32_array, &st, &ns) || ns != MT_N || napi_get_value_double(env, argv[1], &times) != napi_ok || !(times >= 0))
    return fail(env, "twist: state Int32Array(624), a count >= 0, kernel expected");
  const int level = level_arg(env, argv[2]);
  if (!level) return fail(env, "twist: kernel 0 (best), 1 (portable), 2 (AVX2) or 3 (AVX-512), one this CPU has");
  for (double t = 0; t < times; t++) {
    if (level == AVX512) twist512(st);
    else if (level == AVX2) twist256(st);
    else twist(st);
  }
  return NULL;
}

/** apply(dtype 0 bf16 | 1 f32, src: Uint8Array, norm: Float32Array, dst: Uint8Array, scale, kernel): dst = src + noise. */
static napi_value apply(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  int32_t dtype;
  void *src, *norm, *dst;
  size_t ns, nn, nd;
  double scale;
  if (argc != 6 || napi_get_value_int32(env, argv[0], &dtype) != napi_ok || (dtype != 0 && dtype != 1) || !view(env, argv[1], napi_uint8_array, &src, &ns) ||
      !view(env, argv[2], napi_float32_array, &norm, &nn) || !view(env, argv[3], napi_uint8_array, &dst, &nd) || napi_get_value_double(env, argv[4], &scale) != napi_ok)
    return fail(env, "apply: dtype 0 or 1, src Uint8Array, normals Float32Array, dst Uint8Array, scale, kernel expected");
  const size_t size = dtype == 0 ? 2 : 4;
  if (ns != nn * size || nd != ns) return fail(env, "apply: src and dst must hold one value per normal");
  const int level = level_arg(env, argv[5]);
  if (!level) return fail(env, "apply: kernel 0 (best), 1 (portable), 2 (AVX2) or 3 (AVX-512), one this CPU has");
  if (level == AVX512) apply512(dtype, src, norm, dst, nn, (float)scale);
  else if (level == AVX2) apply256(dtype, src, norm, dst, nn, (float)scale);
  else apply_portable(dtype, src, norm, dst, nn, (float)scale);
  return NULL;
}

/** supported() -> 3 (AVX-512), 2 (AVX2 with FMA) or 1 (the plain C only): the best kernel this CPU runs. */
static napi_value supported(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value v;
  napi_create_int32(env, best_level(), &v);
  return v;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  static const struct {
    const char *name;
    napi_callback fn;
  } FUNCTIONS[] = {{"normals", normals}, {"twist", twistTimes}, {"apply", apply}, {"supported", supported}};
  for (size_t i = 0; i < sizeof FUNCTIONS / sizeof FUNCTIONS[0]; i++) {
    napi_value f;
    napi_create_function(env, FUNCTIONS[i].name, NAPI_AUTO_LENGTH, FUNCTIONS[i].fn, NULL, &f);
    napi_set_named_property(env, exports, FUNCTIONS[i].name, f);
  }
  return exports;
}
