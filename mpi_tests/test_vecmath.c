/* The vector math behind the softmax kernels, every implementation this CPU
 * can run (AVX-512, AVX2, portable), against double-precision libm. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/testlib.h"
#include "kernels/vecmath.h"

static const mattn__vecmath *impls[3];
static int n_impls;

static void pick_impls(void)
{
    n_impls = 0;
    __builtin_cpu_init();
    impls[n_impls++] = &mattn__vecmath_portable;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        impls[n_impls++] = &mattn__vecmath_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        impls[n_impls++] = &mattn__vecmath_avx512;
}

/* exp on x <= 0 within a few ulp: relative error 8 u (u = 2^-24) covers the
 * polynomial (~1 ulp), the two-constant ln2 reduction and the final scaling.
 * Below -87.3 implementations may flush to 0 (documented in vecmath.h):
 * those values are < 1.2e-38, i.e. 0 beside the row maximum's exp(0) = 1. */
static void test_exp_sum(void **state)
{
    (void)state;
    const int n = 4099; /* not a multiple of any vector width */
    float *x = tl_alloc(sizeof(float) * n), *y = tl_alloc(sizeof(float) * n);
    tl_rng r = tl_rng_make(1);
    for (int i = 0; i < n; i++)
        x[i] = (float)(-100.0 * tl_uniform(&r));
    x[0] = 0.0f, x[1] = -INFINITY, x[2] = -87.0f, x[3] = -1e-30f, x[4] = -0.34657f;
    for (int m = 0; m < n_impls; m++) {
        for (int len = 0; len < 40; len++) { /* every tail length */
            memcpy(y, x, sizeof(float) * n);
            float sum = impls[m]->exp_sum(y, len, 0.0f);
            double want = 0.0;
            for (int i = 0; i < len; i++)
                want += exp((double)x[i]);
            tl_assert_close(sum, want, 1e-6 * (want + 1e-30), "%s exp_sum len %d", impls[m]->name, len);
        }
        memcpy(y, x, sizeof(float) * n);
        double want_sum = 0.0, sum = impls[m]->exp_sum(y, n, 0.0f);
        for (int i = 0; i < n; i++) {
            double e = exp((double)x[i]);
            want_sum += e;
            double tol = x[i] < -87.3f ? exp(-87.3) : 8.0 * 0x1p-24 * e;
            tl_assert_close(y[i], e, tol, "%s exp(%.9g)", impls[m]->name, x[i]);
        }
        /* the returned sum is an fp32 sum of n terms */
        tl_assert_close(sum, want_sum, (n + 8) * 0x1p-24 * want_sum, "%s sum", impls[m]->name);
        /* x - m with a nonzero m */
        float a[3] = {5.0f, 4.0f, -INFINITY};
        float s = impls[m]->exp_sum(a, 3, 5.0f);
        tl_assert_close(a[0], 1.0, 8 * 0x1p-24, "%s exp(0)", impls[m]->name);
        tl_assert_close(a[1], exp(-1.0), 8 * 0x1p-24, "%s exp(-1)", impls[m]->name);
        assert_true(a[2] == 0.0f);
        tl_assert_close(s, 1.0 + exp(-1.0), 16 * 0x1p-24, "%s sum", impls[m]->name);
    }
    free(x), free(y);
}

static void test_max(void **state)
{
    (void)state;
    float x[100];
    for (int m = 0; m < n_impls; m++) {
        assert_true(impls[m]->max(x, 0) == -INFINITY);
        for (int len = 1; len <= 100; len++)
            for (int at = 0; at < len; at += 7) {
                for (int i = 0; i < len; i++)
                    x[i] = -1000.0f + (float)i * 0.5f - (float)len;
                x[at] = 12.5f;
                assert_true(impls[m]->max(x, len) == 12.5f);
                for (int i = 0; i < len; i++)
                    x[i] = -INFINITY;
                assert_true(impls[m]->max(x, len) == -INFINITY);
            }
    }
}

/* cap * tanh(x / cap): the implementations evaluate (1 - e)/(1 + e) with
 * e = exp(-2|y|), whose absolute error is a few u, so the result's absolute
 * error is a few u * cap (plus u relative from the final scaling). */
static void test_softcap(void **state)
{
    (void)state;
    const int n = 1001;
    float x[1001], y[1001];
    for (int i = 0; i < n; i++)
        x[i] = (float)(-200.0 + 0.4 * i);
    x[500] = 0.0f, x[501] = 1e-6f, x[502] = -3e-7f;
    for (int m = 0; m < n_impls; m++)
        for (int c = 0; c < 3; c++) {
            float cap = (float[]){1.0f, 30.0f, 5000.0f}[c];
            memcpy(y, x, sizeof y);
            impls[m]->softcap(y, n, cap);
            for (int i = 0; i < n; i++) {
                double want = cap * tanh((double)x[i] / cap);
                tl_assert_close(y[i], want, 6 * 0x1p-24 * cap + 2 * 0x1p-24 * fabs(want),
                                "%s softcap(%g, cap %g)", impls[m]->name, x[i], cap);
            }
        }
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Dropout keeps w[j] (times scale) iff (mix(key ^ kp) >> 40) >= threshold. */
static void test_dropout(void **state)
{
    (void)state;
    float w[77];
    uint64_t key = 0x123456789abcdef0ULL;
    for (int m = 0; m < n_impls; m++)
        for (int len = 0; len <= 77; len += 11)
            for (uint32_t thr = 0; thr <= (1u << 24); thr += (1u << 22)) {
                for (int j = 0; j < 77; j++)
                    w[j] = 1.0f + (float)j;
                impls[m]->dropout(w, len, key, 1000 + len, thr, 2.5f);
                for (int j = 0; j < 77; j++) {
                    float want = 1.0f + (float)j;
                    if (j < len)
                        want = (mix(key ^ (uint64_t)(1000 + len + j)) >> 40) >= thr ? want * 2.5f : 0.0f;
                    assert_true(w[j] == want);
                }
            }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    pick_impls();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_sum),
        cmocka_unit_test(test_max),
        cmocka_unit_test(test_softcap),
        cmocka_unit_test(test_dropout),
    };
    int failed = tl_run_spread("vecmath", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
