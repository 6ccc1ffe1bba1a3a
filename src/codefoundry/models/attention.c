/* Causal attention, forward and backward, for the training path on x86-64 CPUs (AVX2, FMA), fp32: see
 * cpu_ops.py (`NativeCausal`) for where it is used and why.
 *
 * One task per (batch row, key/value head) owns that head's key and value gradients, so tasks never write
 * the same memory. Per task the keys and values are packed once into panels (panels.h), then each of the
 * head's query heads is taken in blocks of BQ queries: the scores of a block against the keys up to its
 * last query (whole panels of 16) are materialised (BQ x T floats), the softmax is exact (a row's max,
 * then its exponentials), and the block's output is the product of the probabilities and the values.
 * Backward recomputes a block's probabilities from the saved log-sum-exp (as flash attention does) and
 * forms dS = P (dP - rowsum(dO O)) scale; dQ = dS K, and dK, dV accumulate dS^T Q and P^T dO through
 * 8 x 8 transposes.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "panels.h"

/* exp(x) for x <= 0 (Cephes' single-precision scheme: x = n ln 2 + r, a degree-6 polynomial in r, and
 * 2^n put into the exponent); below -87 it returns exp(-87), and NaN for NaN (max_ps returns its second
 * operand when either is NaN: with x first, a NaN score became exp(-87) and its row came out finite). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static long up16(long x) { return (x + 15) & ~15L; }

/* panels of the rows of x (t rows, d floats, row stride xs) as columns: (tp / 16, d, 16), zero past t */
static void pack_rows_as_columns(const float *x, long xs, long t, long tp, long d, float *out) {
    for (long p = 0; p < tp / PANEL; p++)
        for (long c = 0; c < PANEL; c++) {
            long r = p * PANEL + c;
            for (long j = 0; j < d; j++) out[(p * d + j) * PANEL + c] = r < t ? x[r * xs + j] : 0.0f;
        }
}

/* panels of x's columns (t rows, d floats, row stride xs): (d / 16, tp, 16), zero rows past t */
static void pack_columns(const float *x, long xs, long t, long tp, long d, float *out) {
    for (long p = 0; p < d / PANEL; p++)
        for (long r = 0; r < tp; r++) {
            float *o = out + (p * tp + r) * PANEL;
            if (r < t) memcpy(o, x + r * xs + p * PANEL, PANEL * sizeof(float));
            else memset(o, 0, PANEL * sizeof(float));
        }
}

#define BQ 64

/* d (8 x 8, row stride ld) = the transpose of s (8 x 8, row stride ls) */
static inline void transpose8(const float *s, long ls, float *d, long ld) {
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ls), r2 = _mm256_loadu_ps(s + 2 * ls),
           r3 = _mm256_loadu_ps(s + 3 * ls), r4 = _mm256_loadu_ps(s + 4 * ls), r5 = _mm256_loadu_ps(s + 5 * ls),
           r6 = _mm256_loadu_ps(s + 6 * ls), r7 = _mm256_loadu_ps(s + 7 * ls);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ld, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ld, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ld, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ld, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ld, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ld, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ld, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* d (cols x rows, row stride ld) = the transpose of s (rows x cols, row stride ls); both multiples of 8 */
static void transpose(const float *s, long ls, long rows, long cols, float *d, long ld) {
    for (long i = 0; i < rows; i += 8)
        for (long j = 0; j < cols; j += 8) transpose8(s + i * ls + j, ls, d + j * ld + i, ld);
}

/* the row's largest value, or NaN where it holds a NaN (so the whole softmax row is NaN, as PyTorch's) */
static float row_max(const float *row, long n) {
    __m256 m8 = _mm256_set1_ps(-INFINITY), nan8 = _mm256_setzero_ps();
    long j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 x = _mm256_loadu_ps(row + j);
        m8 = _mm256_max_ps(m8, x);
        nan8 = _mm256_or_ps(nan8, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    }
    float buf[8], mx = -INFINITY;
    _mm256_storeu_ps(buf, m8);
    for (int i = 0; i < 8; i++) mx = buf[i] > mx ? buf[i] : mx;
    int nan = _mm256_movemask_ps(nan8);
    for (; j < n; j++) {
        mx = row[j] > mx ? row[j] : mx;
        nan |= row[j] != row[j];
    }
    return nan ? NAN : mx;
}

typedef struct {
    long b, h, t; /* element strides of the batch, head and position dims; the last dim is contiguous */
} strides;

/* Causal softmax(q k^T * scale) v; returns 1 where memory ran out (0 when done). q (B, H, T, d), k and v (B, Hkv, T, d), o (B, H, T, d), each with its
 * strides (the last dim contiguous); lse (B, H, T) contiguous: each row's log-sum-exp, for backward. */
int cf_attention_forward(const float *q, strides qs, const float *k, strides ks, const float *v, strides vs,
                          float *o, strides os, float *lse, long B, long H, long Hkv, long T, long d,
                          float scale, int threads) {
    long tp = up16(T), group = H / Hkv;
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (long task = 0; task < B * Hkv; task++) {
        long b = task / Hkv, g = task % Hkv;
        /* one block per task, carved up; every piece a multiple of 16 floats, so each stays 64-byte aligned */
        float *kp = aligned_alloc(64, sizeof(float) * (2 * tp * d + BQ * tp));
        if (!kp) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        float *vp = kp + tp * d, *s = vp + tp * d;
        pack_rows_as_columns(k + b * ks.b + g * ks.h, ks.t, T, tp, d, kp);
        pack_columns(v + b * vs.b + g * vs.h, vs.t, T, tp, d, vp);
        for (long h = g * group; h < (g + 1) * group; h++)
            for (long i0 = 0; i0 < T; i0 += BQ) {
                long m = T - i0 < BQ ? T - i0 : BQ, nk = up16(i0 + m);
                panels_gemm(q + b * qs.b + h * qs.h + i0 * qs.t, qs.t, kp, d * PANEL, d, nk, s, tp, m, 0);
                for (long r = 0; r < m; r++) {
                    float *row = s + r * tp;
                    long last = i0 + r;  /* keys 0..last */
                    float mx = row_max(row, last + 1);
                    __m256 sub = _mm256_set1_ps(mx * scale), sc = _mm256_set1_ps(scale), sum8 = _mm256_setzero_ps();
                    long j = 0;
                    for (; j + 8 <= last + 1; j += 8) {
                        __m256 e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(row + j), sc, sub));
                        _mm256_storeu_ps(row + j, e);
                        sum8 = _mm256_add_ps(sum8, e);
                    }
                    float tail = 0.0f;
                    for (; j <= last; j++) { row[j] = expf(row[j] * scale - mx * scale); tail += row[j]; }
                    for (long z = last + 1; z < nk; z++) row[z] = 0.0f;
                    float buf[8]; _mm256_storeu_ps(buf, sum8);
                    float sum = tail + buf[0] + buf[1] + buf[2] + buf[3] + buf[4] + buf[5] + buf[6] + buf[7];
                    lse[(b * H + h) * T + i0 + r] = mx * scale + logf(sum);
                    __m256 inv = _mm256_set1_ps(1.0f / sum);
                    for (j = 0; j + 8 <= nk; j += 8) _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j), inv));
                }
                panels_gemm(s, tp, vp, tp * PANEL, nk, d, o + b * os.b + h * os.h + i0 * os.t, os.t, m, 0);
            }
        free(kp);
    }
    return failed;
}

/* The gradients of cf_attention_forward: dq (B, H, T, d), dk and dv (B, Hkv, T, d), written (not added). */
int cf_attention_backward(const float *q, strides qs, const float *k, strides ks, const float *v, strides vs,
                           const float *o, strides os, const float *dout, strides ds, const float *lse,
                           float *dq, strides dqs, float *dk, strides dks, float *dv, strides dvs,
                           long B, long H, long Hkv, long T, long d, float scale, int threads) {
    long tp = up16(T), group = H / Hkv;
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (long task = 0; task < B * Hkv; task++) {
        long b = task / Hkv, g = task % Hkv;
        size_t f = sizeof(float);
        /* one block per task, carved up as in the forward pass */
        float *kp = aligned_alloc(64, f * (5 * tp * d + 4 * BQ * tp + 2 * BQ * d));
        if (!kp) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        float *vtp = kp + tp * d, *kn = vtp + tp * d, *dka = kn + tp * d, *dva = dka + tp * d;
        float *p = dva + tp * d, *dp = p + BQ * tp, *pt = dp + BQ * tp, *dst = pt + tp * BQ;
        float *qp = dst + tp * BQ, *dop = qp + BQ * d;
        memset(dka, 0, f * tp * d), memset(dva, 0, f * tp * d);
        const float *kg = k + b * ks.b + g * ks.h, *vg = v + b * vs.b + g * vs.h;
        pack_rows_as_columns(kg, ks.t, T, tp, d, kp);
        pack_rows_as_columns(vg, vs.t, T, tp, d, vtp);
        pack_columns(kg, ks.t, T, tp, d, kn);
        for (long h = g * group; h < (g + 1) * group; h++)
            for (long i0 = 0; i0 < T; i0 += BQ) {
                long m = T - i0 < BQ ? T - i0 : BQ, nk = up16(i0 + m), mp = up16(m);
                const float *qb = q + b * qs.b + h * qs.h + i0 * qs.t, *ob = o + b * os.b + h * os.h + i0 * os.t;
                const float *db = dout + b * ds.b + h * ds.h + i0 * ds.t;
                panels_gemm(qb, qs.t, kp, d * PANEL, d, nk, p, tp, m, 0);
                panels_gemm(db, ds.t, vtp, d * PANEL, d, nk, dp, tp, m, 0);
                for (long r = 0; r < m; r++) {
                    long last = i0 + r;
                    float *pr = p + r * tp, *dr = dp + r * tp;
                    float l = lse[(b * H + h) * T + i0 + r], dd = 0.0f;
                    for (long c = 0; c < d; c++) dd += db[r * ds.t + c] * ob[r * os.t + c];
                    __m256 sc = _mm256_set1_ps(scale), lv = _mm256_set1_ps(l), dv8 = _mm256_set1_ps(dd);
                    long j = 0;
                    for (; j + 8 <= last + 1; j += 8) {
                        __m256 e = exp8(_mm256_fmsub_ps(_mm256_loadu_ps(pr + j), sc, lv));
                        _mm256_storeu_ps(pr + j, e);
                        _mm256_storeu_ps(dr + j, _mm256_mul_ps(_mm256_mul_ps(e, _mm256_sub_ps(_mm256_loadu_ps(dr + j), dv8)), sc));
                    }
                    for (; j <= last; j++) { pr[j] = expf(pr[j] * scale - l); dr[j] = pr[j] * (dr[j] - dd) * scale; }
                    for (; j < nk; j++) { pr[j] = 0.0f; dr[j] = 0.0f; }
                }
                /* dq = ds k */
                panels_gemm(dp, tp, kn, tp * PANEL, nk, d, dq + b * dqs.b + h * dqs.h + i0 * dqs.t, dqs.t, m, 0);
                /* transposes (nk x mp), zero columns past m */
                for (long r = m; r < mp; r++) {
                    memset(p + r * tp, 0, sizeof(float) * nk);
                    memset(dp + r * tp, 0, sizeof(float) * nk);
                }
                transpose(p, tp, mp, nk, pt, BQ);
                transpose(dp, tp, mp, nk, dst, BQ);
                pack_columns(qb, qs.t, m, mp, d, qp);
                pack_columns(db, ds.t, m, mp, d, dop);
                panels_gemm(pt, BQ, dop, mp * PANEL, mp, d, dva, d, nk, 1);
                panels_gemm(dst, BQ, qp, mp * PANEL, mp, d, dka, d, nk, 1);
            }
        for (long t = 0; t < T; t++) {
            memcpy(dk + b * dks.b + g * dks.h + t * dks.t, dka + t * d, f * d);
            memcpy(dv + b * dvs.b + g * dvs.h + t * dvs.t, dva + t * d, f * d);
        }
        free(kp);
    }
    return failed;
}
