/* C = A . W (+ bias) (+ C) for a few rows of A, fp32, on x86-64 with AVX2 and FMA: the decoding step's
 * products (see small_gemm.py, which builds and loads this file, and says why it exists).
 *
 * W (k x n) is stored as n / 16 panels of 16 columns, each panel k x 16 contiguous, so that one panel is
 * read front to back while up to six rows of A each keep two 8-float accumulators in registers (12 of
 * the 16 vector registers). Every output is a plain sum over k in order, one fused multiply-add per
 * term. Threads (OpenMP, the runtime PyTorch already loaded) take contiguous runs of panels.
 */
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

static void panel(const float *a, long lda, const float *panels, long k, float *c, long ldc, long m,
                  const float *bias, int accumulate, long p) {
    const float *w = panels + p * k * PANEL;
    const float *b = bias ? bias + p * PANEL : 0;
    for (long r = 0; r < m; r += 6) {
        long rows = m - r < 6 ? m - r : 6;
        BLOCKS[rows](a + r * lda, lda, w, k, c + r * ldc + p * PANEL, ldc, b, accumulate);
    }
}

/* c[i, :n] = a[i, :k] . W (+ bias) (+ c[i, :n] where accumulate), for i < m; a's and c's rows are lda and
 * ldc floats apart; panels 32-byte aligned. */
void cf_small_gemm(const float *a, long lda, const float *panels, long k, long n, float *c, long ldc, long m,
                   const float *bias, int accumulate, int threads) {
    long count = n / PANEL;
    if (threads <= 1 || count < 2) {
        for (long p = 0; p < count; p++) panel(a, lda, panels, k, c, ldc, m, bias, accumulate, p);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long p = 0; p < count; p++) panel(a, lda, panels, k, c, ldc, m, bias, accumulate, p);
}

/* The decoding step's elementwise work around the products, one call each instead of 4-6 PyTorch ops
 * (each ~2-10 us at these sizes, mostly fixed cost). */

/* h[i, :] = x[i, :] / sqrt(sum_j x[i, j]^2 + dim_eps): the RMS norm whose weight is folded into the next
 * product (see decode_weights.py). Rows dim floats apart; dim a multiple of 8. */
void cf_norm_rows(const float *x, float *h, long rows, long dim, float dim_eps) {
    for (long i = 0; i < rows; i++) {
        const float *xi = x + i * dim;
        __m256 acc = _mm256_setzero_ps();
        for (long j = 0; j < dim; j += 8) {
            __m256 v = _mm256_loadu_ps(xi + j);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        __m256 scale = _mm256_set1_ps(1.0f / __builtin_sqrtf(_mm_cvtss_f32(s) + dim_eps));
        for (long j = 0; j < dim; j += 8) _mm256_storeu_ps(h + i * dim + j, _mm256_mul_ps(_mm256_loadu_ps(xi + j), scale));
    }
}

/* For each row i of qkv (heads + 2 * kv_heads heads of hd floats, in that order: queries, keys, values):
 * the query and key heads rotated (out = x * cos + roll(x, hd / 2) * sin, sin's first half negated by the
 * caller), the queries written to q (row i at i * qr, head j at + j * hd), the keys and the values to
 * their caches k and v at position `start` (element strides kr, kh, kp for row, head, position). The
 * tables' row for row i is at i * table_stride (0: one row for all). */
void cf_rotate_store(const float *qkv, long rows, long heads, long kv_heads, long hd, const float *cos,
                     const float *sin, long table_stride, float *q, long qr, long kr, long kh, long kp,
                     float *k, float *v, long start) {
    long half = hd / 2, width = (heads + 2 * kv_heads) * hd;
    for (long i = 0; i < rows; i++) {
        const float *c = cos + i * table_stride, *s = sin + i * table_stride, *row = qkv + i * width;
        for (long j = 0; j < heads + kv_heads; j++) {
            const float *x = row + j * hd;
            float *o = j < heads ? q + i * qr + j * hd : k + i * kr + (j - heads) * kh + start * kp;
            for (long d = 0; d < half; d++) o[d] = x[d] * c[d] + x[d + half] * s[d];
            for (long d = half; d < hd; d++) o[d] = x[d] * c[d] + x[d - half] * s[d];
        }
        for (long j = 0; j < kv_heads; j++) {
            const float *x = row + (heads + kv_heads + j) * hd;
            float *o = v + i * kr + j * kh + start * kp;
            for (long d = 0; d < hd; d++) o[d] = x[d];
        }
    }
}
