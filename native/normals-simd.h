// mt19937's twist and tempering and the Box-Muller pairs of torch's AVX2 kernel on one vector width, included by
// normals.c once per width with the operations below defined (WIDTH: the functions' suffix, twist512 and so on;
// LANES: 32-bit lanes; TARGET: the target attribute; V/VI/M: float vector, int vector, lane mask). Written once so
// that the AVX-512 and AVX2 code cannot drift apart; both are held to the portable C path and to PyTorch's fixtures
// by the tests.
//
// Needed: LOADU(p), STOREU(p, v), SET1(f), SET1I(i), ADD, SUB, MUL, FMADD(a, b, c), FMSUB(a, b, c), SQRT, I2F,
// F2I_TRUNC, AS_I, AS_F, ADDI, SUBI, ANDI, ORI, XORI, SRLI(v, n), SLLI(v, n), LT(a, b) -> M, KEEP(m, x) (x where m,
// else 0), KEEPI(m, v) (the same on ints), DEC(e, m) (e - 1 where m), ANY_BIT(j, b) -> M (j & b non-zero),
// NO_BIT(j, b) -> M (j & b zero), PICK(m, a, b) (b where m, else a), NEG(m, v) (-v where m). The file undefines
// them at its end, for the next width.

#define FN_(name, width) name##width
#define FN(name, width) FN_(name, width)

/** n tempered words from st into w, LANES at a time. */
TARGET static void FN(temper, WIDTH)(const uint32_t *st, uint32_t *w, size_t n) {
  size_t i = 0;
  for (; i + LANES <= n; i += LANES) {
    VI y = LOADU(st + i);
    y = XORI(y, SRLI(y, 11));
    y = XORI(y, ANDI(SLLI(y, 7), SET1I((int)0x9d2c5680u)));
    y = XORI(y, ANDI(SLLI(y, 15), SET1I((int)0xefc60000u)));
    y = XORI(y, SRLI(y, 18));
    STOREU(w + i, y);
  }
  for (; i < n; i++) w[i] = temper(st[i]);
}

/** twist() LANES words a step: each step reads its words' old neighbours before it stores (the same words in order). */
TARGET static void FN(twist, WIDTH)(uint32_t *st) {
  const VI upper = SET1I((int)0x80000000u), lower = SET1I(0x7fffffff), matrix = SET1I((int)MATRIX_A);
#define TWIST_STEP(k, from)                                                                                  \
  do {                                                                                                       \
    const VI y = ORI(ANDI(LOADU(st + (k)), upper), ANDI(LOADU(st + (k) + 1), lower));                        \
    STOREU(st + (k), XORI(XORI(LOADU(st + (from)), SRLI(y, 1)), KEEPI(ANY_BIT(y, 1), matrix)));              \
  } while (0)
  int k = 0;
  // Words 0..226 from words 397..623 (not yet twisted), then the ragged end alone.
  for (; k + LANES <= MT_N - MT_M; k += LANES) TWIST_STEP(k, k + MT_M);
  twist_words(st, k, MT_N - MT_M);
  k = MT_N - MT_M;
  // Words 227..622 from words 0..395, twisted above (each step's sources lie at least 227 words back).
  for (; k + LANES <= MT_N - 1; k += LANES) TWIST_STEP(k, k + MT_M - MT_N);
#undef TWIST_STEP
  twist_words(st, k, MT_N);
}

/** The kernel on one vector of pairs: k1, k2 the 24-bit integers; the cos and the sin normals out. */
TARGET static inline void FN(pairs, WIDTH)(VI k1, VI k2, V *cOut, V *sOut) {
  const V one = SET1(1.0f);
  // log(1 - u1), 1 - u1 = m 2^-24 exact in float32, as x 2^e with x in [0.5, 1).
  const VI mb = AS_I(I2F(SUBI(SET1I(0x1000000), k1)));
  VI e = SUBI(SRLI(mb, 23), SET1I(150));
  V x = AS_F(ORI(ANDI(mb, SET1I(0x007fffff)), SET1I(0x3f000000)));
  const M small = LT(x, SET1(SQRTHF));
  e = DEC(e, small);
  x = ADD(SUB(x, one), KEEP(small, x));
  const V ef = I2F(e);
  const V z = MUL(x, x);
  V y = FMADD(SET1(LOG_P[0]), x, SET1(LOG_P[1]));
  for (int i = 2; i < 9; i++) y = FMADD(y, x, SET1(LOG_P[i]));
  y = MUL(y, x);
  y = FMADD(y, z, MUL(ef, SET1(LOG_Q1)));
  y = SUB(y, MUL(z, SET1(0.5f)));
  const V lg = ADD(ADD(x, y), MUL(ef, SET1(LOG_Q2)));
  const V radius = SQRT(MUL(lg, SET1(-2.0f)));

  const V theta = MUL(SET1(TWO_PI), MUL(I2F(k2), SET1(TWO_M24)));
  const VI j = ANDI(ADDI(F2I_TRUNC(MUL(theta, SET1(FOPI))), SET1I(1)), SET1I(~1));
  const V jf = I2F(j);
  V r = FMADD(jf, SET1(DP1), theta);
  r = FMADD(jf, SET1(DP2), r);
  r = FMADD(jf, SET1(DP3), r);
  const V zz = MUL(r, r);
  V c = FMADD(SET1(COS_P0), zz, SET1(COS_P1));
  c = FMADD(c, zz, SET1(COS_P2));
  c = MUL(c, zz);
  c = FMSUB(c, zz, MUL(zz, SET1(0.5f)));
  c = ADD(c, one);
  V s = FMADD(SET1(SIN_P0), zz, SET1(SIN_P1));
  s = FMADD(s, zz, SET1(SIN_P2));
  s = MUL(s, zz);
  s = FMADD(s, r, r);
  const M swap = ANY_BIT(j, 2);
  const V sn = NEG(ANY_BIT(j, 4), PICK(swap, s, c));
  const V cs = NEG(NO_BIT(SUBI(j, SET1I(2)), 4), PICK(swap, c, s));
  // + 0: a -0 product becomes +0, as the kernel's fmadd(n, 1, 0) makes it.
  *cOut = ADD(MUL(radius, cs), SET1(0.0f));
  *sOut = ADD(MUL(radius, sn), SET1(0.0f));
}

#undef WIDTH
#undef LANES
#undef TARGET
#undef V
#undef VI
#undef M
#undef LOADU
#undef STOREU
#undef SET1
#undef SET1I
#undef ADD
#undef SUB
#undef MUL
#undef FMADD
#undef FMSUB
#undef SQRT
#undef I2F
#undef F2I_TRUNC
#undef AS_I
#undef AS_F
#undef ADDI
#undef SUBI
#undef ANDI
#undef ORI
#undef XORI
#undef SRLI
#undef SLLI
#undef LT
#undef KEEP
#undef KEEPI
#undef DEC
#undef ANY_BIT
#undef NO_BIT
#undef PICK
#undef NEG
#undef FN
#undef FN_
