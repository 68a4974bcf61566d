/* AVX2 + FMA vector math; compiled with -mavx2 -mfma, called only when the
 * CPU has both. Same polynomial as the portable version (see there). */
#include <immintrin.h>
#include <math.h>

#include "core/dropout.h"
#include "kernels/vecmath.h"

/* exp(x) for x <= 0, 8 lanes; x < -87.3 (and -inf) gives 0. */
static inline __m256 exp8_nonpos(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.3f);
    __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(underflow, y);
}

static inline float hmax8(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float max_avx2(const float *x, int64_t n)
{
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
        m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
    }
    float m = hmax8(_mm256_max_ps(m0, m1));
    for (; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

static float exp_sum_avx2(float *x, int64_t n, float m)
{
    const __m256 vm = _mm256_set1_ps(m);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256 a = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
        __m256 b = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
        _mm256_storeu_ps(x + j, a);
        _mm256_storeu_ps(x + j + 8, b);
        s0 = _mm256_add_ps(s0, a);
        s1 = _mm256_add_ps(s1, b);
    }
    for (; j + 8 <= n; j += 8) {
        __m256 a = exp8_nonpos(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
        _mm256_storeu_ps(x + j, a);
        s0 = _mm256_add_ps(s0, a);
    }
    if (j < n) {
        __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - j)), idx);
        __m256 in = _mm256_maskload_ps(x + j, lanes);
        __m256 a = _mm256_and_ps(exp8_nonpos(_mm256_sub_ps(in, vm)),
                                 _mm256_castsi256_ps(lanes));
        _mm256_maskstore_ps(x + j, lanes, a);
        s0 = _mm256_add_ps(s0, a);
    }
    return hsum8(_mm256_add_ps(s0, s1));
}

static void softcap_avx2(float *x, int64_t n, float cap)
{
    const __m256 vcap = _mm256_set1_ps(cap), inv = _mm256_set1_ps(1.0f / cap);
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + j), inv);
        __m256 ay = _mm256_andnot_ps(sign, y);
        __m256 e = exp8_nonpos(_mm256_mul_ps(ay, _mm256_set1_ps(-2.0f)));
        __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
        t = _mm256_or_ps(t, _mm256_and_ps(sign, y));
        _mm256_storeu_ps(x + j, _mm256_mul_ps(vcap, t));
    }
    if (j < n)
        mattn__vecmath_portable.softcap(x + j, n - j, cap);
}

static void dropout_avx2(float *w, int64_t n, uint64_t row_key, int64_t kp0,
                         uint32_t threshold, float scale)
{
    /* AVX2 has no 64-bit multiply: the hash stays scalar, the rest is cheap. */
    mattn__vecmath_portable.dropout(w, n, row_key, kp0, threshold, scale);
}

const mattn__vecmath mattn__vecmath_avx2 = {
    .name = "avx2",
    .max = max_avx2,
    .exp_sum = exp_sum_avx2,
    .softcap = softcap_avx2,
    .dropout = dropout_avx2,
};
