/* AVX2 decode inner loops; compiled with -mavx2 -mfma and entered only when
 * the CPU has them and not AVX-512 (src/decode/decode_ops.c): the same
 * design as decode_ops_avx512.c at half the width, blocked for 16 vector
 * registers instead of 32 (dots 2 rows x 4 keys; accum 4 rows x 16
 * columns, the last rows 2 or 1 x 32), so a K/V vector loaded once still
 * feeds two to four FMAs and nothing spills. */
#include <immintrin.h>

#include "decode/decode.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Lane mask of the first `left` of 8 floats, for maskload/maskstore. */
static ALWAYS_INLINE __m256i tail8(int64_t left)
{
    int n = left >= 8 ? 8 : left <= 0 ? 0 : (int)left;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* [sum(a), sum(b), sum(c), sum(d)] */
static ALWAYS_INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    /* per 128-bit half: [a0+..+a3, b.., c.., d..] */
    __m256 x = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
}

/* RB (<= 2) rows x 4 keys of dot products; keys past nk read row 0 again
 * (a valid address) and are not stored. */
static ALWAYS_INLINE void dots_block(const int RB, const float *q, int64_t D,
                                     const float *k, int64_t ks, int64_t nk, float *s,
                                     int64_t ld)
{
    const float *k0 = k, *k1 = nk > 1 ? k + ks : k, *k2 = nk > 2 ? k + 2 * ks : k,
                *k3 = nk > 3 ? k + 3 * ks : k;
    __m256 acc[2][4];
    for (int r = 0; r < RB; r++)
        for (int i = 0; i < 4; i++)
            acc[r][i] = _mm256_setzero_ps();
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) {
        __m256 x0 = _mm256_loadu_ps(k0 + d), x1 = _mm256_loadu_ps(k1 + d);
        __m256 x2 = _mm256_loadu_ps(k2 + d), x3 = _mm256_loadu_ps(k3 + d);
        for (int r = 0; r < RB; r++) {
            __m256 qv = _mm256_loadu_ps(q + r * D + d);
            acc[r][0] = _mm256_fmadd_ps(x0, qv, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x1, qv, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(x2, qv, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(x3, qv, acc[r][3]);
        }
    }
    if (d < D) {
        __m256i m = tail8(D - d);
        __m256 x0 = _mm256_maskload_ps(k0 + d, m), x1 = _mm256_maskload_ps(k1 + d, m);
        __m256 x2 = _mm256_maskload_ps(k2 + d, m), x3 = _mm256_maskload_ps(k3 + d, m);
        for (int r = 0; r < RB; r++) {
            __m256 qv = _mm256_maskload_ps(q + r * D + d, m);
            acc[r][0] = _mm256_fmadd_ps(x0, qv, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x1, qv, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(x2, qv, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(x3, qv, acc[r][3]);
        }
    }
    for (int r = 0; r < RB; r++) {
        __m128 sums = hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
        if (nk >= 4) {
            _mm_storeu_ps(s + r * ld, sums);
        } else {
            float t[4];
            _mm_storeu_ps(t, sums);
            for (int64_t i = 0; i < nk; i++)
                s[r * ld + i] = t[i];
        }
    }
}

static ALWAYS_INLINE void dots_head(const float *q, int64_t R, int64_t D, const float *k,
                                    int64_t ks, int64_t nk, float *s, int64_t ld)
{
    for (int64_t i = 0; i < nk; i += 4) {
        int64_t n = nk - i < 4 ? nk - i : 4;
        const float *ki = k + i * ks;
        int64_t r = 0;
        for (; r + 2 <= R; r += 2)
            dots_block(2, q + r * D, D, ki, ks, n, s + r * ld + i, ld);
        if (r < R)
            dots_block(1, q + r * D, D, ki, ks, n, s + r * ld + i, ld);
    }
}

/* RB accumulator rows x NV vectors (8 NV columns) starting at column d;
 * RB x NV <= 8 (accumulators) + NV (a V row) + 1 (a weight) fit the 16
 * registers. FULL: all 8 NV columns exist, plain loads; else the Dv tail,
 * masked. */
static ALWAYS_INLINE void accum_block(const int RB, const int NV, const int FULL,
                                      const float *p, int64_t ld, const float *v, int64_t vs,
                                      int64_t nk, int64_t Dv, int64_t d, float *acc)
{
    v += d; /* rebased once: base register + constant addresses (see avx512) */
    acc += d;
    __m256i m[4];
    __m256 a[4][4];
    for (int c = 0; c < NV; c++)
        m[c] = FULL ? _mm256_set1_epi32(-1) : tail8(Dv - d - 8 * c);
#define LOAD(ptr, c) (FULL ? _mm256_loadu_ps(ptr) : _mm256_maskload_ps(ptr, m[c]))
    for (int r = 0; r < RB; r++)
        for (int c = 0; c < NV; c++)
            a[r][c] = LOAD(acc + r * Dv + 8 * c, c);
    for (int64_t i = 0; i < nk; i++) {
        const float *vi = v + i * vs;
        __m256 x[4];
        for (int c = 0; c < NV; c++)
            x[c] = LOAD(vi + 8 * c, c);
        for (int r = 0; r < RB; r++) {
            __m256 w = _mm256_broadcast_ss(p + r * ld + i);
            for (int c = 0; c < NV; c++)
                a[r][c] = _mm256_fmadd_ps(x[c], w, a[r][c]);
        }
    }
#undef LOAD
    for (int r = 0; r < RB; r++)
        for (int c = 0; c < NV; c++) {
            if (FULL)
                _mm256_storeu_ps(acc + r * Dv + 8 * c, a[r][c]);
            else
                _mm256_maskstore_ps(acc + r * Dv + 8 * c, m[c], a[r][c]);
        }
}

/* Rows in blocks of 4 x 16 columns (a V vector feeds 4 FMAs: 14-22% fewer
 * cycles than 2 x 32 at 4 and 8 rows, cache-resident), the remaining rows
 * 2 or 1 at a time x 32 columns (fewer passes over a V row). */
static ALWAYS_INLINE void accum_head(const float *p, int64_t ld, int64_t R, const float *v,
                                     int64_t vs, int64_t nk, int64_t Dv, float *acc)
{
    int64_t r = 0;
    for (; r + 4 <= R; r += 4) {
        int64_t d = 0;
        for (; d + 16 <= Dv; d += 16)
            accum_block(4, 2, 1, p + r * ld, ld, v, vs, nk, Dv, d, acc + r * Dv);
        if (d < Dv)
            accum_block(4, 2, 0, p + r * ld, ld, v, vs, nk, Dv, d, acc + r * Dv);
    }
    for (; r < R; r += 2) {
        const float *pr = p + r * ld;
        float *ar = acc + r * Dv;
        int64_t d = 0;
        if (R - r >= 2) {
            for (; d + 32 <= Dv; d += 32)
                accum_block(2, 4, 1, pr, ld, v, vs, nk, Dv, d, ar);
            if (d < Dv)
                accum_block(2, 4, 0, pr, ld, v, vs, nk, Dv, d, ar);
        } else {
            for (; d + 32 <= Dv; d += 32)
                accum_block(1, 4, 1, pr, ld, v, vs, nk, Dv, d, ar);
            if (d < Dv)
                accum_block(1, 4, 0, pr, ld, v, vs, nk, Dv, d, ar);
        }
    }
}

/* The prefetch, the head loops and the fixed-size dispatch over the above. */
#include "decode/decode_ops_heads.h"

const mattn__dec_ops mattn__dec_ops_avx2 = {
    .name = "avx2",
    .dots = dec_dots,
    .accum = dec_accum,
};
