/* Portable vector math: plain C the compiler can vectorise for any target.
 *
 * exp(x) for x <= 0: x = n*ln2 + r with |r| <= ln2/2, exp(r) by a degree-6
 * polynomial (Cephes expf coefficients, ~1 ulp), 2^n built in the exponent
 * field. Below -87.3 the result would be subnormal; we return 0, which is
 * exact to fp32 precision beside the row maximum's exp(0) = 1. */
#include <math.h>
#include <string.h>

#include "core/dropout.h"
#include "kernels/vecmath.h"

static inline float exp_nonpos(float x)
{
    if (!(x >= -87.3f)) /* also catches -inf; NaN is not produced by callers */
        return 0.0f;
    float n = nearbyintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float z = r * r;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * z + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

static float max_portable(const float *x, int64_t n)
{
    float m = -INFINITY;
    for (int64_t j = 0; j < n; j++)
        m = x[j] > m ? x[j] : m;
    return m;
}

static float exp_sum_portable(float *x, int64_t n, float m)
{
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        x[j] = exp_nonpos(x[j] - m);
        sum += x[j];
    }
    return sum;
}

/* tanh(|y|) = (1 - e) / (1 + e) with e = exp(-2|y|) <= 1: no overflow. */
static void softcap_portable(float *x, int64_t n, float cap)
{
    float inv = 1.0f / cap;
    for (int64_t j = 0; j < n; j++) {
        float y = x[j] * inv;
        float e = exp_nonpos(-2.0f * fabsf(y));
        float t = (1.0f - e) / (1.0f + e);
        x[j] = cap * copysignf(t, y);
    }
}

static void dropout_portable(float *w, int64_t n, uint64_t row_key, int64_t kp0,
                             uint32_t threshold, float scale)
{
    for (int64_t j = 0; j < n; j++)
        w[j] = mattn__dropout_u24(row_key, kp0 + j) >= threshold ? w[j] * scale : 0.0f;
}

const mattn__vecmath mattn__vecmath_portable = {
    .name = "portable",
    .max = max_portable,
    .exp_sum = exp_sum_portable,
    .softcap = softcap_portable,
    .dropout = dropout_portable,
};
