/* AVX-512 decode inner loops; compiled with -mavx512f -mavx512dq -mfma and
 * entered only when the CPU has them (src/decode/decode_ops.c).
 *
 * Decode is memory-bound: every K/V row is read from DRAM once and used for
 * all R query rows of its kv head (the q heads of a GQA group, times the
 * queries of a paged tile). Both loops are register-blocked 4 rows x 4 keys
 * (dots) and 4 rows x 64 columns (accum), so a K/V vector loaded once feeds
 * four FMAs and the q rows and accumulators stay in L1. */
#include <immintrin.h>

#include "decode/decode.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE __mmask16 tail16(int64_t left)
{
    return left >= 16 ? (__mmask16)0xffff
                      : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1u);
}

/* [sum(a), sum(b), sum(c), sum(d)]: one transpose-and-add tree for four
 * horizontal sums (~10 shuffles + adds instead of ~32). */
static ALWAYS_INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    /* 128-bit blocks [a0+a2, a1+a3, b0+b2, b1+b3] and the same for c, d */
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    /* block x now holds four floats that sum to the total of vector x */
    __m512 x = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    x = _mm512_add_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(2, 3, 0, 1)));
    x = _mm512_add_ps(x, _mm512_permute_ps(x, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m512i pick = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(pick, x));
}

/* RB (<= 4) rows x 4 keys of dot products; keys past nk read row 0 again
 * (a valid address) and are not stored. The main loop runs unmasked (a mask
 * per load costs mask-register spills at RB = 4); the D % 16 tail is masked
 * once. */
static ALWAYS_INLINE void dots_block(const int RB, const float *q, int64_t D,
                                     const float *k, int64_t ks, int64_t nk, float *s,
                                     int64_t ld)
{
    const float *k0 = k, *k1 = nk > 1 ? k + ks : k, *k2 = nk > 2 ? k + 2 * ks : k,
                *k3 = nk > 3 ? k + 3 * ks : k;
    __m512 acc[4][4];
    for (int r = 0; r < RB; r++)
        for (int i = 0; i < 4; i++)
            acc[r][i] = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) {
        __m512 x0 = _mm512_loadu_ps(k0 + d), x1 = _mm512_loadu_ps(k1 + d);
        __m512 x2 = _mm512_loadu_ps(k2 + d), x3 = _mm512_loadu_ps(k3 + d);
        for (int r = 0; r < RB; r++) {
            __m512 qv = _mm512_loadu_ps(q + r * D + d);
            acc[r][0] = _mm512_fmadd_ps(x0, qv, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x1, qv, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(x2, qv, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(x3, qv, acc[r][3]);
        }
    }
    if (d < D) {
        __mmask16 m = tail16(D - d);
        __m512 x0 = _mm512_maskz_loadu_ps(m, k0 + d), x1 = _mm512_maskz_loadu_ps(m, k1 + d);
        __m512 x2 = _mm512_maskz_loadu_ps(m, k2 + d), x3 = _mm512_maskz_loadu_ps(m, k3 + d);
        for (int r = 0; r < RB; r++) {
            __m512 qv = _mm512_maskz_loadu_ps(m, q + r * D + d);
            acc[r][0] = _mm512_fmadd_ps(x0, qv, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x1, qv, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(x2, qv, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(x3, qv, acc[r][3]);
        }
    }
    __mmask8 keep = (__mmask8)((1u << (nk < 4 ? nk : 4)) - 1u);
    for (int r = 0; r < RB; r++)
        _mm_mask_storeu_ps(s + r * ld, keep, hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
}

static ALWAYS_INLINE void dots_head(const float *q, int64_t R, int64_t D, const float *k,
                                    int64_t ks, int64_t nk, float *s, int64_t ld)
{
    for (int64_t i = 0; i < nk; i += 4) {
        int64_t n = nk - i < 4 ? nk - i : 4;
        const float *ki = k + i * ks;
        int64_t r = 0;
        for (; r + 4 <= R; r += 4)
            dots_block(4, q + r * D, D, ki, ks, n, s + r * ld + i, ld);
        switch (R - r) {
        case 3: dots_block(3, q + r * D, D, ki, ks, n, s + r * ld + i, ld); break;
        case 2: dots_block(2, q + r * D, D, ki, ks, n, s + r * ld + i, ld); break;
        case 1: dots_block(1, q + r * D, D, ki, ks, n, s + r * ld + i, ld); break;
        default: break;
        }
    }
}

/* RB (<= 4) accumulator rows x 64 columns starting at column d. FULL: all
 * 64 columns exist, plain loads; else the Dv tail, masked. */
static ALWAYS_INLINE void accum_block(const int RB, const int FULL, const float *p,
                                      int64_t ld, const float *v, int64_t vs, int64_t nk,
                                      int64_t Dv, int64_t d, float *acc)
{
    /* Rebased once, every address below is a base register plus a
     * constant. Written as acc + r * Dv + d + 16 * c, gcc 12 keeps a pointer
     * per address and spills them: ~30 more instructions per 64 FMAs. */
    v += d;
    acc += d;
    __mmask16 m[4];
    __m512 a[4][4];
    for (int c = 0; c < 4; c++)
        m[c] = FULL ? (__mmask16)0xffff : tail16(Dv - d - 16 * c);
#define LOAD(ptr, c) (FULL ? _mm512_loadu_ps(ptr) : _mm512_maskz_loadu_ps(m[c], ptr))
    for (int r = 0; r < RB; r++)
        for (int c = 0; c < 4; c++)
            a[r][c] = LOAD(acc + r * Dv + 16 * c, c);
    for (int64_t i = 0; i < nk; i++) {
        const float *vi = v + i * vs;
        __m512 x[4];
        for (int c = 0; c < 4; c++)
            x[c] = LOAD(vi + 16 * c, c);
        for (int r = 0; r < RB; r++) {
            __m512 w = _mm512_set1_ps(p[r * ld + i]);
            for (int c = 0; c < 4; c++)
                a[r][c] = _mm512_fmadd_ps(x[c], w, a[r][c]);
        }
    }
#undef LOAD
    for (int r = 0; r < RB; r++)
        for (int c = 0; c < 4; c++) {
            if (FULL)
                _mm512_storeu_ps(acc + r * Dv + 16 * c, a[r][c]);
            else
                _mm512_mask_storeu_ps(acc + r * Dv + 16 * c, m[c], a[r][c]);
        }
}

static ALWAYS_INLINE void accum_rows(const int FULL, const float *p, int64_t ld, int64_t R,
                                     const float *v, int64_t vs, int64_t nk, int64_t Dv,
                                     int64_t d, float *acc)
{
    int64_t r = 0;
    for (; r + 4 <= R; r += 4)
        accum_block(4, FULL, p + r * ld, ld, v, vs, nk, Dv, d, acc + r * Dv);
    switch (R - r) {
    case 3: accum_block(3, FULL, p + r * ld, ld, v, vs, nk, Dv, d, acc + r * Dv); break;
    case 2: accum_block(2, FULL, p + r * ld, ld, v, vs, nk, Dv, d, acc + r * Dv); break;
    case 1: accum_block(1, FULL, p + r * ld, ld, v, vs, nk, Dv, d, acc + r * Dv); break;
    default: break;
    }
}

static ALWAYS_INLINE void accum_head(const float *p, int64_t ld, int64_t R, const float *v,
                                     int64_t vs, int64_t nk, int64_t Dv, float *acc)
{
    int64_t d = 0;
    for (; d + 64 <= Dv; d += 64)
        accum_rows(1, p, ld, R, v, vs, nk, Dv, d, acc);
    if (d < Dv)
        accum_rows(0, p, ld, R, v, vs, nk, Dv, d, acc);
}

/* The prefetch, the head loops and the fixed-size dispatch over the above. */
#include "decode/decode_ops_heads.h"

const mattn__dec_ops mattn__dec_ops_avx512 = {
    .name = "avx512",
    .dots = dec_dots,
    .accum = dec_accum,
};
