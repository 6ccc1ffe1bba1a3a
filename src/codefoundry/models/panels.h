/* The panel product shared by the C kernels of this package (small_gemm.c, attention.c): c = a . W for a
 * few rows of a, fp32, x86-64 with AVX2 and FMA, where W (k x n) is stored as n / 16 panels of 16 columns,
 * each k x 16 contiguous. One panel is read front to back while up to six rows of a each keep two 8-float
 * accumulators in registers (12 of the 16 vector registers). Every output is a plain sum over k in
 * order, one fused multiply-add per term.
 */
#ifndef CODEFOUNDRY_PANELS_H
#define CODEFOUNDRY_PANELS_H
#include <immintrin.h>

#define PANEL 16

#define ZERO(i) __m256 lo##i = _mm256_setzero_ps(), hi##i = _mm256_setzero_ps();
#define TERM(i)                                                                                           \
    {                                                                                                     \
        __m256 s = _mm256_broadcast_ss(a + (i) * lda + j);                                                \
        lo##i = _mm256_fmadd_ps(s, w0, lo##i);                                                            \
        hi##i = _mm256_fmadd_ps(s, w1, hi##i);                                                            \
    }
#define STORE(i)                                                                                          \
    {                                                                                                     \
        float *o = c + (i) * ldc;                                                                         \
        if (bias) {                                                                                       \
            lo##i = _mm256_add_ps(lo##i, _mm256_loadu_ps(bias));                                          \
            hi##i = _mm256_add_ps(hi##i, _mm256_loadu_ps(bias + 8));                                      \
        }                                                                                                 \
        if (accumulate) {                                                                                 \
            lo##i = _mm256_add_ps(lo##i, _mm256_loadu_ps(o));                                             \
            hi##i = _mm256_add_ps(hi##i, _mm256_loadu_ps(o + 8));                                         \
        }                                                                                                 \
        _mm256_storeu_ps(o, lo##i);                                                                       \
        _mm256_storeu_ps(o + 8, hi##i);                                                                   \
    }
#define LOOP(TERMS)                                                                                       \
    for (long j = 0; j < k; j++) {                                                                        \
        __m256 w0 = _mm256_load_ps(w + PANEL * j), w1 = _mm256_load_ps(w + PANEL * j + 8);                \
        TERMS                                                                                             \
    }
#define BLOCK(name, ZEROS, TERMS, STORES)                                                                 \
    static void name(const float *restrict a, long lda, const float *restrict w, long k, float *c,        \
                     long ldc, const float *bias, int accumulate) {                                       \
        ZEROS LOOP(TERMS) STORES                                                                          \
    }

BLOCK(rows1, ZERO(0), TERM(0), STORE(0))
BLOCK(rows2, ZERO(0) ZERO(1), TERM(0) TERM(1), STORE(0) STORE(1))
BLOCK(rows3, ZERO(0) ZERO(1) ZERO(2), TERM(0) TERM(1) TERM(2), STORE(0) STORE(1) STORE(2))
BLOCK(rows4, ZERO(0) ZERO(1) ZERO(2) ZERO(3), TERM(0) TERM(1) TERM(2) TERM(3),
      STORE(0) STORE(1) STORE(2) STORE(3))
BLOCK(rows5, ZERO(0) ZERO(1) ZERO(2) ZERO(3) ZERO(4), TERM(0) TERM(1) TERM(2) TERM(3) TERM(4),
      STORE(0) STORE(1) STORE(2) STORE(3) STORE(4))
BLOCK(rows6, ZERO(0) ZERO(1) ZERO(2) ZERO(3) ZERO(4) ZERO(5),
      TERM(0) TERM(1) TERM(2) TERM(3) TERM(4) TERM(5),
      STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5))

typedef void (*block_fn)(const float *, long, const float *, long, float *, long, const float *, int);
static const block_fn BLOCKS[7] = {0, rows1, rows2, rows3, rows4, rows5, rows6};

static void panel(const float *a, long lda, const float *w, long k, float *c, long ldc, long m,
                  const float *bias, int accumulate) {
    for (long r = 0; r < m; r += 6) {
        long rows = m - r < 6 ? m - r : 6;
        BLOCKS[rows](a + r * lda, lda, w, k, c + r * ldc, ldc, bias, accumulate);
    }
}

/* c[i, :n] (+)= a[i, :k] . W for i < m, serially; W's panel p at w + p * ps (ps >= 16 k). */
static void panels_gemm(const float *a, long lda, const float *w, long ps, long k, long n, float *c, long ldc,
                        long m, int accumulate) {
    for (long p = 0; p < n / PANEL; p++) panel(a, lda, w + p * ps, k, c + p * PANEL, ldc, m, 0, accumulate);
}
#endif
