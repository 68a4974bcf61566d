/* Validates the float64 reference gradient (common/refgrad.c) by finite
 * differences, for every option of SPEC §3-4: for each element x of q, k, v,
 * the bias and the sinks, the central difference (L(x+h) - L(x-h)) / 2h of
 * the float64 loss L = sum(dO * o) must match the analytic gradient.
 * Nothing here uses the library: it is what makes the reference a reference
 * for test_backward.c. Tests are spread over the ranks of the job.
 *
 * Tolerance: with h = 1e-5 the truncation error is h^2/6 |L'''| ~ 2e-11 |L'''|
 * and cancellation adds ~1e-16 |L| / h ~ 1e-11 |L|; on these tiny problems
 * (|L| < 100, |L'''| < 1e3) both are below 1e-7, so 1e-6 (1 + |grad|) leaves
 * a wide margin while any wrong term (a missing factor, a wrong sign, a
 * missing head in a GQA sum) is off by O(|grad|). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/refgrad.h"

#define FD_STEP 1e-5
#define FD_TOL 1e-6

/* Checks every element of one input array. */
static void fd_array(const char *what, const char *name, const tc_problem *p, rg_inputs *x,
                     double *arr, int64_t n, const double *grad)
{
    for (int64_t e = 0; e < n; e++) {
        double save = arr[e];
        if (!isfinite(save))
            continue; /* a -inf sink: constant */
        arr[e] = save + FD_STEP;
        double lp = rg_loss(p, x);
        arr[e] = save - FD_STEP;
        double lm = rg_loss(p, x);
        arr[e] = save;
        double fd = (lp - lm) / (2.0 * FD_STEP);
        if (!(fabs(fd - grad[e]) <= FD_TOL * (1.0 + fabs(grad[e]))))
            fail_msg("%s: d%s[%lld]: analytic %.12g, finite difference %.12g", what, name,
                     (long long)e, grad[e], fd);
    }
}

/* Finite differences for every differentiable input of p, and a check that
 * the gradients are not all (vacuously) zero. */
static void fd_check(const char *what, const tc_problem *p, uint64_t seed)
{
    tl_rng r = tl_rng_make(seed);
    float *dout = rg_random_dout(&r, p);
    rg_inputs x = rg_inputs_make(p, dout);
    rg_grads g = rg_backward(p, &x, NULL);
    int64_t nq = p->B * p->T * p->Hq * p->D, nk = p->B * p->S * p->Hkv * p->D,
            nv = p->B * p->S * p->Hkv * p->Dv;
    fd_array(what, "q", p, &x, x.q, nq, g.dq);
    fd_array(what, "k", p, &x, x.k, nk, g.dk);
    fd_array(what, "v", p, &x, x.v, nv, g.dv);
    if (x.bias)
        fd_array(what, "bias", p, &x, x.bias, p->bias_b * p->bias_h * p->T * p->S, g.dbias);
    if (x.sinks)
        fd_array(what, "sinks", p, &x, x.sinks, p->Hq, g.dsinks);
    /* Not vacuous: some gradient is far from zero. */
    double big = 0.0;
    for (int64_t e = 0; e < nq; e++)
        big = fmax(big, fabs(g.dq[e]));
    for (int64_t e = 0; e < nv; e++)
        big = fmax(big, fabs(g.dv[e]));
    if (p->T > 0 && p->S > 0)
        assert_true(big > 1e-3);
    rg_grads_free(&g);
    rg_inputs_free(&x);
    free(dout);
}

static tc_problem tiny(uint64_t seed, int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv,
                       int64_t D, int64_t Dv)
{
    tl_rng r = tl_rng_make(seed);
    return tc_make(&r, B, T, S, Hq, Hkv, D, Dv, 1.5);
}

/* ------------------------------------------------------------------ tests */

static void test_fd_plain_heads(void **state)
{
    (void)state;
    tc_problem p = tiny(1, 2, 4, 5, 2, 2, 3, 2); /* MHA, D != Dv */
    fd_check("mha", &p, 11);
    tc_free(&p);
    p = tiny(2, 1, 3, 6, 4, 2, 3, 4); /* GQA: dk/dv sum over 2 q heads */
    fd_check("gqa", &p, 12);
    tc_free(&p);
    p = tiny(3, 2, 5, 4, 3, 1, 2, 3); /* MQA */
    fd_check("mqa", &p, 13);
    tc_free(&p);
    p = tiny(4, 1, 4, 4, 2, 1, 3, 3);
    p.scale = -0.7; /* explicit (negative) scale */
    fd_check("scale", &p, 14);
    tc_free(&p);
}

static void test_fd_lengths(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 5}, {5, 1}, {3, 7}, {7, 3}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        tc_problem p = tiny(20 + c, 1, shapes[c][0], shapes[c][1], 2, 1, 3, 2);
        fd_check("lengths", &p, 21 + c);
        p.causal = 1, p.q_offset = p.S - p.T;
        fd_check("lengths causal", &p, 31 + c);
        tc_free(&p);
    }
}

static void test_fd_causal_offsets(void **state)
{
    (void)state;
    tc_problem p = tiny(40, 2, 5, 5, 2, 1, 3, 2);
    p.causal = 1;
    fd_check("causal", &p, 41);
    p.q_offset = 3, p.kv_offset = 1;
    fd_check("causal offsets", &p, 42);
    p.q_offset = -2, p.kv_offset = 0; /* first rows fully masked */
    fd_check("causal masked rows", &p, 43);
    tc_free(&p);
}

static void test_fd_window_chunk(void **state)
{
    (void)state;
    tc_problem p = tiny(50, 1, 6, 7, 2, 2, 3, 2);
    p.window_left = 1, p.window_right = 0;
    fd_check("window (1,0)", &p, 51);
    p.window_left = 0, p.window_right = 2;
    fd_check("window (0,2)", &p, 52);
    p.window_left = p.window_right = -1;
    p.chunk = 3, p.causal = 1;
    fd_check("chunked causal", &p, 53);
    p.chunk = 2, p.causal = 0, p.q_offset = -3, p.kv_offset = 1;
    fd_check("chunk offsets", &p, 54);
    tc_free(&p);
}

static void test_fd_segments(void **state)
{
    (void)state;
    tc_problem p = tiny(60, 2, 6, 5, 2, 1, 3, 2);
    static const int32_t qs[12] = {0, 0, 1, 1, 1, -1, 2, 2, 2, 3, -1, -1};
    static const int32_t ks[10] = {0, 1, 1, 0, -1, 2, 3, 3, 2, 2};
    p.q_seg = tl_alloc(sizeof qs), p.kv_seg = tl_alloc(sizeof ks);
    memcpy(p.q_seg, qs, sizeof qs), memcpy(p.kv_seg, ks, sizeof ks);
    fd_check("segments", &p, 61);
    tc_free(&p);
}

static void test_fd_mask(void **state)
{
    (void)state;
    static const int64_t dims[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (size_t c = 0; c < 4; c++) {
        tl_rng r = tl_rng_make(70 + c);
        tc_problem p = tc_make(&r, 2, 4, 5, 4, 2, 3, 2, 1.5);
        p.mask_b = dims[c][0], p.mask_h = dims[c][1];
        int64_t n = p.mask_b * p.mask_h * p.T * p.S;
        p.mask = tl_alloc((size_t)n);
        for (int64_t x = 0; x < n; x++)
            p.mask[x] = (uint8_t)(tl_int(&r, 3) != 0);
        fd_check("mask", &p, 75 + c);
        tc_free(&p);
    }
}

static void test_fd_bias(void **state)
{
    (void)state;
    static const int64_t dims[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (size_t c = 0; c < 4; c++) {
        tl_rng r = tl_rng_make(80 + c);
        tc_problem p = tc_make(&r, 2, 4, 5, 4, 2, 3, 2, 1.5);
        p.bias_b = dims[c][0], p.bias_h = dims[c][1];
        int64_t n = p.bias_b * p.bias_h * p.T * p.S;
        p.bias = tl_alloc(sizeof(float) * (size_t)n);
        tl_fill(&r, p.bias, n, 2.0);
        fd_check("bias", &p, 85 + c);
        tc_free(&p);
    }
}

static void test_fd_softcap(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(90);
    tc_problem p = tc_make(&r, 1, 4, 6, 2, 1, 4, 3, 3.0); /* logits up to ~9 */
    p.softcap = 2.0;
    fd_check("softcap", &p, 91);
    p.bias_b = 1, p.bias_h = 2;
    p.bias = tl_alloc(sizeof(float) * 2 * 4 * 6);
    tl_fill(&r, p.bias, 2 * 4 * 6, 2.0);
    fd_check("softcap + bias", &p, 92);
    tc_free(&p);
}

static void test_fd_sinks(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(100);
    tc_problem p = tc_make(&r, 2, 4, 5, 4, 2, 3, 2, 1.5);
    p.sinks = tl_alloc(sizeof(float) * 4);
    p.sinks[0] = 0.5f, p.sinks[1] = -1.0f, p.sinks[2] = 2.0f, p.sinks[3] = -INFINITY;
    fd_check("sinks", &p, 101);
    p.causal = 1, p.q_offset = -2; /* masked rows: lse = sink, o = 0 */
    fd_check("sinks masked rows", &p, 102);
    tc_free(&p);
}

static void test_fd_dropout(void **state)
{
    (void)state;
    tc_problem p = tiny(110, 2, 5, 6, 2, 1, 3, 2);
    p.dropout_p = 0.4f, p.seed = 17;
    fd_check("dropout", &p, 111);
    p.drop_b0 = 2, p.drop_h0 = 3, p.causal = 1;
    fd_check("dropout shard offsets", &p, 112);
    tc_free(&p);
}

static void test_fd_fully_masked(void **state)
{
    (void)state;
    /* Row 1 masked by the mask, rows 0 and 4 by segment padding; their
     * gradients are exactly 0 and nothing is NaN. */
    tc_problem p = tiny(120, 1, 5, 4, 2, 2, 3, 2);
    p.mask_b = p.mask_h = 1;
    p.mask = tl_alloc(5 * 4);
    memset(p.mask, 1, 5 * 4);
    memset(p.mask + 4, 0, 4);
    p.q_seg = tl_alloc(sizeof(int32_t) * 5), p.kv_seg = tl_alloc(sizeof(int32_t) * 4);
    static const int32_t qs[5] = {-1, 0, 0, 0, -1}, ks[4] = {0, 0, 0, 0};
    memcpy(p.q_seg, qs, sizeof qs), memcpy(p.kv_seg, ks, sizeof ks);
    fd_check("fully masked rows", &p, 121);
    tl_rng r = tl_rng_make(122);
    float *dout = rg_random_dout(&r, &p);
    rg_inputs x = rg_inputs_make(&p, dout);
    rg_grads g = rg_backward(&p, &x, NULL);
    static const int64_t masked[3] = {0, 1, 4};
    for (int m = 0; m < 3; m++)
        for (int64_t h = 0; h < 2; h++)
            for (int64_t d = 0; d < 3; d++)
                assert_true(g.dq[(masked[m] * 2 + h) * 3 + d] == 0.0);
    rg_grads_free(&g);
    rg_inputs_free(&x);
    free(dout);
    tc_free(&p);
}

static void test_fd_everything(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(130);
    tc_problem p = tc_make(&r, 2, 6, 7, 4, 2, 3, 2, 1.5);
    p.causal = 1, p.q_offset = 2, p.window_left = 4, p.window_right = 1, p.chunk = 5;
    p.mask_b = 1, p.mask_h = 4;
    p.mask = tl_alloc(4 * 6 * 7);
    for (int64_t x = 0; x < 4 * 6 * 7; x++)
        p.mask[x] = (uint8_t)(tl_int(&r, 5) != 0);
    p.bias_b = 2, p.bias_h = 1;
    p.bias = tl_alloc(sizeof(float) * 2 * 6 * 7);
    tl_fill(&r, p.bias, 2 * 6 * 7, 1.0);
    p.sinks = tl_alloc(sizeof(float) * 4);
    tl_fill(&r, p.sinks, 4, 1.0);
    p.softcap = 3.0, p.dropout_p = 0.3f, p.seed = 9, p.scale = 0.8;
    fd_check("everything", &p, 131);
    tc_free(&p);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_plain_heads),   cmocka_unit_test(test_fd_lengths),
        cmocka_unit_test(test_fd_causal_offsets), cmocka_unit_test(test_fd_window_chunk),
        cmocka_unit_test(test_fd_segments),      cmocka_unit_test(test_fd_mask),
        cmocka_unit_test(test_fd_bias),          cmocka_unit_test(test_fd_softcap),
        cmocka_unit_test(test_fd_sinks),         cmocka_unit_test(test_fd_dropout),
        cmocka_unit_test(test_fd_fully_masked),  cmocka_unit_test(test_fd_everything),
    };
    int failed = tl_run_spread("backward finite differences", tests,
                               sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
