/* AVX-512 (F + DQ) vector math; compiled with -mavx512f -mavx512dq, called
 * only when the CPU has both. The polynomial is the portable one (see there);
 * 2^n is applied with vscalefps. */
#include <immintrin.h>
#include <math.h>

#include "core/dropout.h"
#include "kernels/vecmath.h"

/* exp(x) for x <= 0, 16 lanes; x below -87.3 (and -inf) gives 0 rather than
 * a subnormal, which would cost a slow path in later arithmetic. */
static inline __m512 exp16_nonpos(__m512 x)
{
    __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_scalef_ps(normal, y, n);
}

static inline __mmask16 tail_mask(int64_t left)
{
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

static float max_avx512(const float *x, int64_t n)
{
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
        m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + j + 16));
    }
    for (; j < n; j += 16)
        m0 = _mm512_mask_max_ps(m0, tail_mask(n - j), m0,
                                _mm512_maskz_loadu_ps(tail_mask(n - j), x + j));
    return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

static float exp_sum_avx512(float *x, int64_t n, float m)
{
    const __m512 vm = _mm512_set1_ps(m);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        __m512 a = exp16_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + j), vm));
        __m512 b = exp16_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), vm));
        _mm512_storeu_ps(x + j, a);
        _mm512_storeu_ps(x + j + 16, b);
        s0 = _mm512_add_ps(s0, a);
        s1 = _mm512_add_ps(s1, b);
    }
    for (; j < n; j += 16) {
        __mmask16 k = tail_mask(n - j);
        __m512 a = exp16_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vm));
        a = _mm512_maskz_mov_ps(k, a);
        _mm512_mask_storeu_ps(x + j, k, a);
        s0 = _mm512_add_ps(s0, a);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void softcap_avx512(float *x, int64_t n, float cap)
{
    const __m512 vcap = _mm512_set1_ps(cap), inv = _mm512_set1_ps(1.0f / cap);
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = tail_mask(n - j);
        __m512 y = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), inv);
        __m512 ay = _mm512_abs_ps(y);
        __m512 e = exp16_nonpos(_mm512_mul_ps(ay, _mm512_set1_ps(-2.0f)));
        __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
        __m512i ys = _mm512_and_si512(_mm512_castps_si512(y), sign);
        t = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t), ys));
        _mm512_mask_storeu_ps(x + j, k, _mm512_mul_ps(vcap, t));
    }
}

/* splitmix64 finaliser on 8 lanes (vpmullq is AVX512DQ). */
static inline __m512i mix8(__m512i x)
{
    x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 30));
    x = _mm512_mullo_epi64(x, _mm512_set1_epi64((long long)0xbf58476d1ce4e5b9ULL));
    x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 27));
    x = _mm512_mullo_epi64(x, _mm512_set1_epi64((long long)0x94d049bb133111ebULL));
    return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}

static void dropout_avx512(float *w, int64_t n, uint64_t row_key, int64_t kp0,
                           uint32_t threshold, float scale)
{
    const __m512i key = _mm512_set1_epi64((long long)row_key);
    const __m512i thr = _mm512_set1_epi64((long long)threshold);
    const __m512i step = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t j = 0; j < n; j += 16) {
        __m512i kp = _mm512_add_epi64(_mm512_set1_epi64((long long)(kp0 + j)), step);
        __m512i u0 = _mm512_srli_epi64(mix8(_mm512_xor_si512(key, kp)), 40);
        kp = _mm512_add_epi64(kp, _mm512_set1_epi64(8));
        __m512i u1 = _mm512_srli_epi64(mix8(_mm512_xor_si512(key, kp)), 40);
        __mmask16 keep = (__mmask16)(_mm512_cmpge_epu64_mask(u0, thr) |
                                     ((unsigned)_mm512_cmpge_epu64_mask(u1, thr) << 8));
        __mmask16 k = tail_mask(n - j);
        __m512 x = _mm512_maskz_loadu_ps(k, w + j);
        _mm512_mask_storeu_ps(w + j, k, _mm512_maskz_mul_ps(keep, x, vscale));
    }
}

const mattn__vecmath mattn__vecmath_avx512 = {
    .name = "avx512",
    .max = max_avx512,
    .exp_sum = exp_sum_avx512,
    .softcap = softcap_avx512,
    .dropout = dropout_avx512,
};
