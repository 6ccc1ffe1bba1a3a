/* The decoding step's C kernels (built with attention.c by native.py; small_gemm.py calls them and says
 * why they exist): the products of a few rows against panels of 16 output columns (panels.h), with
 * threads (OpenMP, the runtime PyTorch already loaded) taking contiguous runs of panels; the folded RMS
 * norm; the rotary op with the cache writes.
 */
#include "panels.h"

static inline void one(const float *a, long lda, const float *panels, long k, float *c, long ldc, long m,
                       const float *bias, int accumulate, long p) {
    panel(a, lda, panels + p * k * PANEL, k, c + p * PANEL, ldc, m, bias ? bias + p * PANEL : 0, accumulate);
}

/* c[i, :n] = a[i, :k] . W (+ bias) (+ c[i, :n] where accumulate), for i < m; a's and c's rows are lda and
 * ldc floats apart; panels 32-byte aligned. */
void cf_small_gemm(const float *a, long lda, const float *panels, long k, long n, float *c, long ldc, long m,
                   const float *bias, int accumulate, int threads) {
    long count = n / PANEL;
    if (threads <= 1 || count < 2) {
        for (long p = 0; p < count; p++) one(a, lda, panels, k, c, ldc, m, bias, accumulate, p);
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long p = 0; p < count; p++) one(a, lda, panels, k, c, ldc, m, bias, accumulate, p);
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
