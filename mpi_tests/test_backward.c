/* Single-rank backward operators (vanilla, flash, sdpa) against the float64
 * reference gradient of common/refgrad.c (itself validated by finite
 * differences in test_backward_fd.c), with the per-element fp32 error bounds
 * derived there, for every option of SPEC §2-4, their combinations, every
 * layout and the edge cases; plus argument errors and the accumulate
 * contract distributed callers build on. Tests are spread over the ranks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cases.h"
#include "common/refgrad.h"
#include "core/problem.h"
#include "kernels/kernels_bwd.h"

static const char *const OPS[] = {"vanilla", "flash", "sdpa"};
#define N_OPS 3

static void check_all_ops(const tc_problem *p, const char *layouts, uint64_t seed)
{
    tl_rng r = tl_rng_make(seed);
    float *dout = rg_random_dout(&r, p);
    for (int op = 0; op < N_OPS; op++)
        for (const char *l = layouts; *l; l++)
            assert_int_equal(rg_run_and_check(OPS[op], p, dout, *l, 1, 0, 0), MATTN_OK);
    free(dout);
}

/* flash with several block shapes and 2 threads: block edges, skipped
 * blocks, kv-range splitting and the dbias private copies all get used. */
static void check_flash_blocks(const tc_problem *p, uint64_t seed)
{
    static const int blocks[][2] = {{0, 0}, {1, 1}, {7, 5}, {16, 32}, {64, 16}};
    tl_rng r = tl_rng_make(seed);
    float *dout = rg_random_dout(&r, p);
    for (size_t c = 0; c < sizeof blocks / sizeof blocks[0]; c++) {
        if (blocks[c][0] == 1 && p->T * p->S > 20000)
            continue; /* 1 x 1 blocks: only on small problems */
        assert_int_equal(rg_run_and_check("flash", p, dout, 't', 2, blocks[c][0], blocks[c][1]),
                         MATTN_OK);
    }
    free(dout);
}

/* ------------------------------------------------------------------ heads, shapes */

static void test_mha(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(1, 2, 37, 53, 3, 3, 16, 16);
    check_all_ops(&p, "thp", 1);
    check_flash_blocks(&p, 1);
    tc_free(&p);
}

static void test_gqa_mqa_dv(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(2, 2, 29, 41, 6, 2, 24, 40); /* GQA, Dv != D */
    check_all_ops(&p, "thp", 2);
    check_flash_blocks(&p, 2);
    tc_free(&p);
    p = tc_seeded(3, 1, 33, 33, 4, 1, 13, 7); /* MQA, odd D */
    check_all_ops(&p, "thpf", 3);
    check_flash_blocks(&p, 3);
    tc_free(&p);
}

static void test_fused_qkv(void **state)
{
    (void)state;
    /* q/k/v slices of one fused buffer, dq/dk/dv slices of another. */
    tc_problem p = tc_seeded(4, 2, 45, 45, 4, 2, 16, 16);
    p.causal = 1;
    check_all_ops(&p, "f", 4);
    tc_free(&p);
}

static void test_lengths(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 300}, {300, 1}, {129, 257},
                                        {257, 129}, {31, 67}, {64, 64}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        tc_problem p = tc_seeded(6 + i, 1, shapes[i][0], shapes[i][1], 2, 1, 8, 12);
        check_all_ops(&p, "t", 6 + i);
        p.causal = 1;
        p.q_offset = p.S - p.T; /* bottom-right */
        check_all_ops(&p, "t", 16 + i);
        check_flash_blocks(&p, 26 + i);
        tc_free(&p);
    }
}

static void test_empty_sizes(void **state)
{
    (void)state;
    /* S = 0: every row fully masked, dq = 0. T = 0: dk = dv = 0. B = 0. */
    static const int64_t sz[][3] = {{2, 5, 0}, {2, 0, 5}, {0, 5, 5}};
    for (size_t c = 0; c < 3; c++) {
        tc_problem p = tc_seeded(20 + c, sz[c][0], sz[c][1], sz[c][2], 2, 2, 8, 8);
        check_all_ops(&p, "t", 20 + c);
        check_flash_blocks(&p, 20 + c);
        p.sinks = tl_alloc(sizeof(float) * 2);
        p.sinks[0] = 1.0f, p.sinks[1] = -2.0f; /* dsinks = 0 exactly */
        check_all_ops(&p, "t", 30 + c);
        tc_free(&p);
    }
}

/* ------------------------------------------------------------------ masks */

static void test_causal_offsets(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(30, 2, 70, 70, 2, 1, 16, 16);
    p.causal = 1;
    check_all_ops(&p, "th", 30);
    check_flash_blocks(&p, 30);
    tc_free(&p);
    p = tc_seeded(31, 1, 40, 100, 2, 2, 16, 16);
    p.causal = 1;
    static const int64_t off[][2] = {{60, 0}, {0, 0}, {1000, 990}, {-5, 0}};
    for (size_t c = 0; c < 4; c++) {
        p.q_offset = off[c][0], p.kv_offset = off[c][1];
        check_all_ops(&p, "t", 31 + c);
        check_flash_blocks(&p, 31 + c);
    }
    tc_free(&p);
}

static void test_window(void **state)
{
    (void)state;
    static const int64_t w[][2] = {{5, 0}, {0, 5}, {3, 7}, {-1, 4}, {4, -1}, {0, 0}, {200, 200}};
    tc_problem p = tc_seeded(40, 1, 90, 110, 2, 1, 16, 16);
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        p.window_left = w[i][0], p.window_right = w[i][1];
        p.causal = 0;
        check_all_ops(&p, "t", 40 + i);
        p.causal = 1;
        check_all_ops(&p, "t", 50 + i);
    }
    p.window_left = 9, p.window_right = 2;
    check_flash_blocks(&p, 40);
    tc_free(&p);
}

static void test_chunk(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(50, 2, 77, 77, 2, 2, 8, 8);
    p.chunk = 8;
    check_all_ops(&p, "t", 50);
    p.causal = 1; /* chunked causal */
    check_all_ops(&p, "t", 51);
    check_flash_blocks(&p, 51);
    p.chunk = 1; /* only itself */
    check_all_ops(&p, "t", 52);
    p.chunk = 32, p.q_offset = 13, p.kv_offset = 5;
    check_all_ops(&p, "t", 53);
    p.q_offset = -20, p.kv_offset = -33; /* negative positions */
    check_all_ops(&p, "t", 54);
    tc_free(&p);
}

static void test_segments(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(60);
    tc_problem p = tc_make(&r, 2, 81, 81, 2, 1, 16, 16, 1.0);
    tc_add_segments(&p);
    tc_random_segments(&r, p.q_seg, 2, 81, 1000);
    memcpy(p.kv_seg, p.q_seg, sizeof(int32_t) * 2 * 81);
    check_all_ops(&p, "th", 60);
    p.causal = 1;
    check_all_ops(&p, "t", 61);
    check_flash_blocks(&p, 61);
    tc_random_segments(&r, p.kv_seg, 2, 81, 3); /* cross attention with packing */
    tc_random_segments(&r, p.q_seg, 2, 81, 3);
    p.causal = 0;
    check_all_ops(&p, "t", 62);
    tc_free(&p);
}

static void test_mask_broadcast(void **state)
{
    (void)state;
    static const int64_t dims[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (size_t c = 0; c < 4; c++) {
        tl_rng r = tl_rng_make(70 + c);
        tc_problem p = tc_make(&r, 2, 33, 47, 4, 2, 16, 16, 1.0);
        tc_add_mask(&p, dims[c][0], dims[c][1]);
        int64_t n = p.mask_b * p.mask_h * p.T * p.S;
        for (int64_t x = 0; x < n; x++)
            p.mask[x] = (uint8_t)(tl_int(&r, 3) != 0 ? 1 + tl_int(&r, 200) : 0);
        check_all_ops(&p, "th", 70 + c);
        check_flash_blocks(&p, 70 + c);
        tc_free(&p);
    }
}

static void test_bias_broadcast(void **state)
{
    (void)state;
    /* Every broadcast shape; with 2 threads the shared entries (batch or kv
     * head broadcast) go through private copies. Hkv = 2 so tasks of
     * different kv heads share a head-broadcast bias. */
    static const int64_t dims[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (size_t c = 0; c < 4; c++) {
        tl_rng r = tl_rng_make(80 + c);
        tc_problem p = tc_make(&r, 2, 31, 43, 4, 2, 16, 16, 1.0);
        tc_random_bias(&r, &p, dims[c][0], dims[c][1], 3.0);
        check_all_ops(&p, "th", 80 + c);
        check_flash_blocks(&p, 80 + c);
        float *dout = rg_random_dout(&r, &p);
        assert_int_equal(rg_run_and_check("vanilla", &p, dout, 't', 2, 0, 0), MATTN_OK);
        free(dout);
        tc_free(&p);
    }
}

/* ------------------------------------------------------------------ logits */

static void test_sinks(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(90);
    tc_problem p = tc_make(&r, 2, 40, 50, 4, 2, 16, 16, 1.0);
    p.sinks = tl_alloc(sizeof(float) * 4);
    p.sinks[0] = 0.5f, p.sinks[1] = -3.0f, p.sinks[2] = 4.0f, p.sinks[3] = -INFINITY;
    check_all_ops(&p, "t", 90);
    p.causal = 1, p.q_offset = -3; /* masked rows: lse = sink, o = 0 */
    check_all_ops(&p, "t", 91);
    check_flash_blocks(&p, 91);
    tc_free(&p);
}

static void test_softcap(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(100);
    tc_problem p = tc_make(&r, 1, 45, 60, 2, 1, 32, 16, 3.0); /* logits up to ~50 */
    p.softcap = 5.0;
    check_all_ops(&p, "t", 100);
    check_flash_blocks(&p, 100);
    p.softcap = 50.0, p.causal = 1;
    check_all_ops(&p, "t", 101);
    tc_free(&p);
}

static void test_huge_logits(void **state)
{
    (void)state;
    /* Exact small-integer dot products with scale 1: logits ~1e4. */
    tl_rng r = tl_rng_make(110);
    tc_problem p = tc_make(&r, 1, 30, 70, 2, 1, 16, 16, 1.0);
    tc_exact_logits(&r, &p);
    check_all_ops(&p, "t", 110);
    p.scale = -1.0, p.causal = 1;
    check_all_ops(&p, "t", 111);
    tc_free(&p);
}

static void test_scale(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(5, 1, 20, 30, 2, 1, 16, 16);
    p.scale = 0.37;
    check_all_ops(&p, "t", 5);
    p.scale = -1.25;
    check_all_ops(&p, "t", 6);
    tc_free(&p);
}

/* ------------------------------------------------------------------ dropout */

static void test_dropout(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(120, 2, 37, 45, 4, 2, 16, 16);
    p.dropout_p = 0.3f, p.seed = 1234;
    check_all_ops(&p, "th", 120);
    check_flash_blocks(&p, 120);
    p.dropout_p = 0.9f, p.seed = 99, p.causal = 1;
    check_all_ops(&p, "t", 121);
    p.drop_b0 = 3, p.drop_h0 = 8; /* a shard's global indices */
    check_all_ops(&p, "t", 122);
    tc_free(&p);
}

/* ------------------------------------------------------------------ outputs */

static void test_fully_masked_rows(void **state)
{
    (void)state;
    /* Rows 0-4 see nothing (causal, q before every key), row 5 by the mask,
     * row 19 by segment padding: their dq must be exactly 0, and every
     * gradient free of NaN, in every operator. */
    tl_rng r = tl_rng_make(140);
    tc_problem p = tc_make(&r, 1, 20, 20, 2, 2, 8, 8, 1.0);
    p.causal = 1, p.q_offset = -5;
    tc_add_mask(&p, 1, 1);
    memset(p.mask, 1, 20 * 20);
    memset(p.mask + 5 * 20, 0, 20);
    tc_add_segments(&p);
    p.q_seg[19] = -1;
    check_all_ops(&p, "t", 140);

    float *dout = rg_random_dout(&r, &p);
    rg_inputs in = rg_inputs_make(&p, dout);
    rg_grads ref = rg_backward(&p, &in, NULL);
    float o[20 * 2 * 8], lse[2 * 20], dq[20 * 2 * 8], dk[20 * 2 * 8], dv[20 * 2 * 8];
    for (int x = 0; x < 20 * 2 * 8; x++)
        o[x] = (float)ref.o[x];
    for (int x = 0; x < 2 * 20; x++)
        lse[x] = (float)ref.lse[x];
    mattn_options opts = tc_options(&p);
    mattn_tensor tq = mattn_tensor_bthd(p.q, 1, 20, 2, 8), tk = mattn_tensor_bthd(p.k, 1, 20, 2, 8),
                 tv = mattn_tensor_bthd(p.v, 1, 20, 2, 8), to = mattn_tensor_bthd(o, 1, 20, 2, 8),
                 tdo = mattn_tensor_bthd(dout, 1, 20, 2, 8), tdq = mattn_tensor_bthd(dq, 1, 20, 2, 8),
                 tdk = mattn_tensor_bthd(dk, 1, 20, 2, 8), tdv = mattn_tensor_bthd(dv, 1, 20, 2, 8);
    for (int op = 0; op < 2; op++) {
        int rc = op ? mattn_flash_backward(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL,
                                           NULL, &opts)
                    : mattn_vanilla_backward(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv,
                                             NULL, NULL, &opts);
        assert_int_equal(rc, MATTN_OK);
        static const int rows[7] = {0, 1, 2, 3, 4, 5, 19};
        for (int i = 0; i < 7; i++)
            for (int x = 0; x < 2 * 8; x++)
                assert_true(dq[rows[i] * 16 + x] == 0.0f);
        for (int x = 0; x < 20 * 2 * 8; x++)
            assert_true(!isnan(dq[x]) && !isnan(dk[x]) && !isnan(dv[x]));
    }
    rg_grads_free(&ref);
    rg_inputs_free(&in);
    free(dout);
    tc_free(&p);
}

static void test_threads(void **state)
{
    (void)state;
    /* Many (b, kv head) pairs (one task each), then few: MQA with B = 1 has
     * one pair, so flash splits the kv range and sums dq partials. */
    tc_problem p = tc_seeded(180, 2, 300, 300, 4, 2, 32, 32);
    p.causal = 1;
    tl_rng r = tl_rng_make(181);
    float *dout = rg_random_dout(&r, &p);
    for (int op = 0; op < N_OPS; op++) {
        assert_int_equal(rg_run_and_check(OPS[op], &p, dout, 't', 2, 0, 0), MATTN_OK);
        assert_int_equal(rg_run_and_check(OPS[op], &p, dout, 't', 0, 0, 0), MATTN_OK);
    }
    free(dout);
    tc_free(&p);
    p = tc_seeded(182, 1, 333, 517, 4, 1, 24, 16);
    tc_random_sinks(&r, &p, 1.0);
    tc_random_bias(&r, &p, 1, 1, 1.0);
    dout = rg_random_dout(&r, &p);
    for (int th = 2; th <= 3; th++)
        assert_int_equal(rg_run_and_check("flash", &p, dout, 'h', th, 16, 64), MATTN_OK);
    free(dout);
    tc_free(&p);
}

static void test_flash_panels(void **state)
{
    (void)state;
    /* Rows held a panel of positions at a time (very long T in real use):
     * shrink the panel so dK/dV accumulate over several sweeps, with and
     * without kv-range splitting. */
    tl_rng r = tl_rng_make(210);
    tc_problem p = tc_make(&r, 1, 150, 130, 4, 2, 16, 8, 1.0);
    p.causal = 1, p.q_offset = 20;
    tc_random_bias(&r, &p, 1, 4, 1.0);
    float *dout = rg_random_dout(&r, &p);
    setenv("MATTN_FLASH_BWD_PANEL", "40", 1);
    assert_int_equal(rg_run_and_check("flash", &p, dout, 'h', 1, 8, 16), MATTN_OK);
    assert_int_equal(rg_run_and_check("flash", &p, dout, 't', 2, 16, 32), MATTN_OK);
    assert_int_equal(rg_run_and_check("flash", &p, dout, 't', 2, 0, 0), MATTN_OK);
    free(dout);
    tc_free(&p);
}

/* Runs even when the test fails, so later tests see the default panel. */
static int unset_panel_env(void **state)
{
    (void)state;
    unsetenv("MATTN_FLASH_BWD_PANEL");
    return 0;
}

/* ------------------------------------------------------------------ combinations */

static void test_random_combinations(void **state)
{
    (void)state;
    static const tc_random_spec spec = {.max_len = 120, .max_dim = 40, .max_span = 40,
                                        .kv_offset = 1, .mask = 1, .bias = 1, .scale = 1};
    for (int iter = 0; iter < 20; iter++) {
        tl_rng r = tl_rng_make(1000 + iter);
        tc_problem p = tc_random_problem(&r, &spec, (uint64_t)iter);
        float *dout = rg_random_dout(&r, &p);
        char layout = "thp"[tl_int(&r, 3)];
        for (int op = 0; op < N_OPS; op++)
            assert_int_equal(rg_run_and_check(OPS[op], &p, dout, layout, 1, 0, 0), MATTN_OK);
        int bq = 1 + (int)tl_int(&r, 20), bkv = 1 + (int)tl_int(&r, 40);
        assert_int_equal(rg_run_and_check("flash", &p, dout, 't', 2, bq, bkv), MATTN_OK);
        free(dout);
        tc_free(&p);
    }
}

static void test_everything_at_once(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(130);
    tc_problem p = tc_make(&r, 2, 96, 160, 6, 2, 20, 12, 1.0);
    tc_every_option(&r, &p); /* q_offset = S - T = 64 */
    check_all_ops(&p, "thp", 130);
    check_flash_blocks(&p, 130);
    tc_free(&p);
}

/* ------------------------------------------------------------------ end to end */

static void test_after_library_forward(void **state)
{
    (void)state;
    /* o and lse from the library's own flash forward: the reference bound
     * then includes the forward's error bounds (tc_reference's tol_o and
     * tol_lse) as input errors. */
    tl_rng r = tl_rng_make(150);
    tc_problem p = tc_make(&r, 2, 100, 130, 4, 2, 32, 24, 1.0);
    p.causal = 1, p.q_offset = 30;
    tc_random_sinks(&r, &p, 1.0);
    p.softcap = 4.0, p.dropout_p = 0.2f, p.seed = 3;
    const int64_t B = 2, T = 100, S = 130, Hq = 4, Hkv = 2, D = 32, Dv = 24;
    size_t no = (size_t)(B * T * Hq * Dv), nl = (size_t)(B * Hq * T);
    float *o = tl_alloc(sizeof(float) * no), *lse = tl_alloc(sizeof(float) * nl);
    float *dout = rg_random_dout(&r, &p), *dsinks = tl_alloc(sizeof(float) * Hq);
    float *dq = tl_alloc(sizeof(float) * (size_t)(B * T * Hq * D));
    float *dk = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * D));
    float *dv = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * Dv));
    mattn_tensor tq = mattn_tensor_bthd(p.q, B, T, Hq, D), tk = mattn_tensor_bthd(p.k, B, S, Hkv, D),
                 tv = mattn_tensor_bthd(p.v, B, S, Hkv, Dv), to = mattn_tensor_bthd(o, B, T, Hq, Dv),
                 tdo = mattn_tensor_bthd(dout, B, T, Hq, Dv),
                 tdq = mattn_tensor_bthd(dq, B, T, Hq, D), tdk = mattn_tensor_bthd(dk, B, S, Hkv, D),
                 tdv = mattn_tensor_bthd(dv, B, S, Hkv, Dv);
    mattn_options opts = tc_options(&p);
    assert_int_equal(mattn_flash_forward(&tq, &tk, &tv, &to, lse, &opts), MATTN_OK);
    assert_int_equal(mattn_flash_backward(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, dsinks,
                                          NULL, &opts),
                     MATTN_OK);
    double *tol_o = tl_alloc(sizeof(double) * (size_t)(B * T * Hq));
    double *tol_lse = tl_alloc(sizeof(double) * nl);
    tc_reference(&p, NULL, NULL, NULL, tol_o, tol_lse, NULL);
    rg_inputs in = rg_inputs_make(&p, dout);
    rg_input_err err = {tol_o, tol_lse};
    rg_grads ref = rg_backward(&p, &in, &err);
    rg_check("after flash forward", "dq", dq, ref.dq, ref.tol_dq, B * T * Hq * D);
    rg_check("after flash forward", "dk", dk, ref.dk, ref.tol_dk, B * S * Hkv * D);
    rg_check("after flash forward", "dv", dv, ref.dv, ref.tol_dv, B * S * Hkv * Dv);
    rg_check("after flash forward", "dsinks", dsinks, ref.dsinks, ref.tol_dsinks, Hq);
    rg_grads_free(&ref);
    rg_inputs_free(&in);
    free(o), free(lse), free(dout), free(dsinks), free(dq), free(dk), free(dv);
    free(tol_o), free(tol_lse);
    tc_free(&p);
}

/* ------------------------------------------------------------------ errors */

typedef int (*bwd_fn)(const mattn_tensor *, const mattn_tensor *, const mattn_tensor *,
                      const mattn_tensor *, const float *, const mattn_tensor *,
                      const mattn_tensor *, const mattn_tensor *, const mattn_tensor *, float *,
                      float *, const mattn_options *);

static int sdpa_bwd(const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                    const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                    const mattn_tensor *dq, const mattn_tensor *dk, const mattn_tensor *dv,
                    float *dsinks, float *dbias, const mattn_options *opts)
{
    return mattn_sdpa_backward(q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias, opts, NULL);
}

static void expect_error(int rc, int want, const char *what)
{
    if (rc != want)
        fail_msg("%s: got %s, expected %s", what, mattn_err_name(rc), mattn_err_name(want));
    assert_true(strlen(mattn_last_error()) > 0);
}

static void test_argument_errors(void **state)
{
    (void)state;
    static const bwd_fn fns[3] = {mattn_vanilla_backward, mattn_flash_backward, sdpa_bwd};
    float q[2 * 4 * 2 * 8] = {0}, k[2 * 5 * 2 * 8] = {0}, v[2 * 5 * 2 * 8] = {0};
    float o[2 * 4 * 2 * 8] = {0}, dout[2 * 4 * 2 * 8] = {0}, lse[2 * 2 * 4] = {0};
    float dq[2 * 4 * 2 * 8], dk[2 * 5 * 2 * 8], dv[2 * 5 * 2 * 8], ds[2], db[4 * 5];
    float sinks[2] = {0}, bias[4 * 5] = {0};
    mattn_tensor tq = mattn_tensor_bthd(q, 2, 4, 2, 8), tk = mattn_tensor_bthd(k, 2, 5, 2, 8),
                 tv = mattn_tensor_bthd(v, 2, 5, 2, 8), to = mattn_tensor_bthd(o, 2, 4, 2, 8),
                 tdo = mattn_tensor_bthd(dout, 2, 4, 2, 8), tdq = mattn_tensor_bthd(dq, 2, 4, 2, 8),
                 tdk = mattn_tensor_bthd(dk, 2, 5, 2, 8), tdv = mattn_tensor_bthd(dv, 2, 5, 2, 8);
    for (int f = 0; f < 3; f++) {
        bwd_fn fn = fns[f];
        mattn_options opts = mattn_options_default();
        assert_int_equal(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                         MATTN_OK);
        expect_error(fn(&tq, &tk, &tv, &to, NULL, &tdo, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "lse NULL");
        expect_error(fn(&tq, &tk, &tv, &to, lse, NULL, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "dout NULL");
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, NULL, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "dk NULL");
        mattn_tensor bad = tdq;
        bad.seq = 3;
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &bad, &tdk, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_SHAPE, "dq shape");
        bad = tdo;
        bad.dim = 7;
        expect_error(fn(&tq, &tk, &tv, &to, lse, &bad, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_SHAPE, "dout shape");
        bad = tdv;
        bad.stride_seq = 0; /* every position of dv at one address: a race */
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &bad, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "overlapping dv");
        bad = tdk;
        bad.stride_head = 4; /* heads overlap by half a row */
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &bad, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "overlapping dk heads");
        bad = tdq;
        bad.stride_batch = -1;
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &bad, &tdk, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "negative stride");
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, ds, NULL, &opts),
                     MATTN_ERR_ARG, "dsinks without sinks");
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, db, &opts),
                     MATTN_ERR_ARG, "dbias without bias");
        lse[3] = NAN;
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "NaN lse");
        lse[3] = INFINITY;
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "+inf lse");
        lse[3] = -INFINITY; /* legal: an empty row */
        assert_int_equal(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                         MATTN_OK);
        lse[3] = 0.0f;
        /* The forward's own checks run too. */
        opts.dropout_p = 1.0f;
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_ARG, "dropout 1");
        opts = mattn_options_default();
        mattn_tensor k3 = mattn_tensor_bthd(k, 2, 5, 3, 4), dk3 = mattn_tensor_bthd(dk, 2, 5, 3, 4);
        expect_error(fn(&tq, &k3, &tv, &to, lse, &tdo, &tdq, &dk3, &tdv, NULL, NULL, &opts),
                     MATTN_ERR_SHAPE, "head mismatch");
        opts.bias = mattn_bias_dense(bias, 1, 1, 3, 5);
        expect_error(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, db, &opts),
                     MATTN_ERR_SHAPE, "bias shape");
        /* Given sinks and bias, dsinks and dbias are optional. */
        opts.bias = mattn_bias_dense(bias, 1, 1, 4, 5);
        opts.sinks = sinks;
        assert_int_equal(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, NULL, &opts),
                         MATTN_OK);
        assert_int_equal(fn(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, ds, db, &opts),
                         MATTN_OK);
    }
}

static void test_inconsistent_lse(void **state)
{
    (void)state;
    /* An lse far below the row's logits (not the forward's) cannot give
     * right gradients, but must not give inf/NaN either: P stays <= 1. */
    tc_problem p = tc_seeded(200, 1, 40, 40, 2, 1, 16, 16);
    tl_rng r = tl_rng_make(201);
    float *dout = rg_random_dout(&r, &p);
    float o[40 * 2 * 16], lse[2 * 40], dq[40 * 2 * 16], dk[40 * 16], dv[40 * 16];
    for (int x = 0; x < 2 * 40; x++)
        lse[x] = -200.0f;
    mattn_options opts = tc_options(&p);
    mattn_tensor tq = mattn_tensor_bthd(p.q, 1, 40, 2, 16), tk = mattn_tensor_bthd(p.k, 1, 40, 1, 16),
                 tv = mattn_tensor_bthd(p.v, 1, 40, 1, 16), to = mattn_tensor_bthd(o, 1, 40, 2, 16),
                 tdo = mattn_tensor_bthd(dout, 1, 40, 2, 16), tdq = mattn_tensor_bthd(dq, 1, 40, 2, 16),
                 tdk = mattn_tensor_bthd(dk, 1, 40, 1, 16), tdv = mattn_tensor_bthd(dv, 1, 40, 1, 16);
    assert_int_equal(mattn_flash_forward(&tq, &tk, &tv, &to, NULL, &opts), MATTN_OK);
    for (int op = 0; op < 2; op++) {
        int rc = op ? mattn_flash_backward(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL,
                                           NULL, &opts)
                    : mattn_vanilla_backward(&tq, &tk, &tv, &to, lse, &tdo, &tdq, &tdk, &tdv,
                                             NULL, NULL, &opts);
        assert_int_equal(rc, MATTN_OK);
        for (int x = 0; x < 40 * 2 * 16; x++)
            assert_true(isfinite(dq[x]));
        for (int x = 0; x < 40 * 16; x++)
            assert_true(isfinite(dk[x]) && isfinite(dv[x]));
    }
    free(dout);
    tc_free(&p);
}

/* ------------------------------------------------------------------ accumulate */

/* A problem narrowed to keys [j0, j0 + n) and/or rows [i0, i0 + m), as a
 * distributed caller builds it: pointers and offsets move, masks/bias/
 * segments are sliced by pointer, the grad's dk/dv/dq/dbias likewise. */
static void narrow(mattn__problem *p, mattn__grad *g, int64_t i0, int64_t m, int64_t j0, int64_t n)
{
    p->q += i0 * p->q_st, p->o += i0 * p->o_st, p->lse += i0;
    p->k += j0 * p->k_ss, p->v += j0 * p->v_ss;
    p->q_offset += i0, p->kv_offset += j0;
    if (p->q_seg)
        p->q_seg += i0, p->kv_seg += j0;
    if (p->mask)
        p->mask += i0 * p->mask_st + j0;
    if (p->bias)
        p->bias += i0 * p->bias_st + j0;
    /* Dropout hashes absolute positions (q_offset + i, kv_offset + j). */
    p->T = m, p->S = n;
    g->dout += i0 * g->do_st;
    g->dq += i0 * g->dq_st, g->dk += j0 * g->dk_ss, g->dv += j0 * g->dv_ss;
    if (g->delta)
        g->delta += i0;
    if (g->dbias)
        g->dbias += i0 * g->dbias_st + j0;
}

static void test_accumulate_contract(void **state)
{
    (void)state;
    /* Splitting the keys in two and the rows in three, and adding every
     * piece's contribution with accumulate = 1 (dsinks asked in one call
     * per row range, D given), must reproduce the one-call gradients: what
     * ring backward will rely on. Causal + window + dropout + bias + sinks
     * + segments, GQA, so every position-dependent path is involved. */
    tl_rng r = tl_rng_make(190);
    tc_problem tp = tc_make(&r, 2, 50, 70, 4, 2, 16, 8, 1.0);
    const int64_t B = 2, T = 50, S = 70, Hq = 4, Hkv = 2, D = 16, Dv = 8;
    tp.causal = 1, tp.q_offset = 20, tp.window_left = 40, tp.window_right = -1;
    tp.dropout_p = 0.3f, tp.seed = 8;
    tc_random_sinks(&r, &tp, 1.0);
    tc_random_bias(&r, &tp, 2, 1, 1.0);
    tc_add_segments(&tp);
    tc_random_segments(&r, tp.q_seg, B, T, 2);
    tc_random_segments(&r, tp.kv_seg, B, S, 2);
    float *dout = rg_random_dout(&r, &tp);
    rg_inputs in = rg_inputs_make(&tp, dout);
    rg_grads ref = rg_backward(&tp, &in, NULL);
    size_t no = (size_t)(B * T * Hq * Dv), nl = (size_t)(B * Hq * T);
    float *o = tl_alloc(sizeof(float) * no), *lse = tl_alloc(sizeof(float) * nl);
    for (size_t x = 0; x < no; x++)
        o[x] = (float)ref.o[x];
    for (size_t x = 0; x < nl; x++)
        lse[x] = (float)ref.lse[x];
    float *delta = tl_alloc(sizeof(float) * nl);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t t = 0; t < T; t++) {
                double s = 0.0;
                for (int64_t d = 0; d < Dv; d++)
                    s += (double)o[((b * T + t) * Hq + h) * Dv + d] *
                         dout[((b * T + t) * Hq + h) * Dv + d];
                delta[(b * Hq + h) * T + t] = (float)s;
            }

    mattn_tensor tq = mattn_tensor_bthd(tp.q, B, T, Hq, D), tk = mattn_tensor_bthd(tp.k, B, S, Hkv, D),
                 tv = mattn_tensor_bthd(tp.v, B, S, Hkv, Dv), to = mattn_tensor_bthd(o, B, T, Hq, Dv);
    mattn_options opts = tc_options(&tp);
    float *dq = tl_alloc(sizeof(float) * (size_t)(B * T * Hq * D));
    float *dk = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * D));
    float *dv = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * Dv));
    float *dsinks = tl_alloc(sizeof(float) * Hq), *dbias = tl_alloc(sizeof(float) * 2 * T * S);
    static const int64_t qcut[4] = {0, 17, 18, 50}, kcut[3] = {0, 33, 70};
    for (int kernel = 0; kernel < 2; kernel++) {
        for (int qi = 0; qi < 3; qi++)
            for (int ki = 0; ki < 2; ki++) {
                mattn__problem p;
                opts.threads = 1 + kernel; /* flash with 2 threads */
                assert_int_equal(mattn__problem_init(&p, &tq, &tk, &tv, &to, lse, &opts), MATTN_OK);
                mattn__grad g = {
                    .dout = dout, .do_sb = T * Hq * Dv, .do_st = Hq * Dv, .do_sh = Dv,
                    .delta = delta, .delta_sb = Hq * T, .delta_sh = T,
                    .dq = dq, .dq_sb = T * Hq * D, .dq_st = Hq * D, .dq_sh = D,
                    .dk = dk, .dk_sb = S * Hkv * D, .dk_ss = Hkv * D, .dk_sh = D,
                    .dv = dv, .dv_sb = S * Hkv * Dv, .dv_ss = Hkv * Dv, .dv_sh = Dv,
                    .dsinks = ki == 0 ? dsinks : NULL,
                    .dbias = dbias, .dbias_sb = T * S, .dbias_sh = 0, .dbias_st = S,
                    .accumulate = qi + ki > 0, /* the first call overwrites */
                };
                narrow(&p, &g, qcut[qi], qcut[qi + 1] - qcut[qi], kcut[ki], kcut[ki + 1] - kcut[ki]);
                int rc = kernel ? mattn__flash_backward_kernel(&p, &g)
                                : mattn__vanilla_backward_kernel(&p, &g);
                assert_int_equal(rc, MATTN_OK);
            }
        /* The buffers start at zero (calloc, then reset below), so the
         * overwriting first call and the accumulating rest sum to the whole. */
        const char *what = kernel ? "flash pieces" : "vanilla pieces";
        rg_check(what, "dq", dq, ref.dq, ref.tol_dq, B * T * Hq * D);
        rg_check(what, "dk", dk, ref.dk, ref.tol_dk, B * S * Hkv * D);
        rg_check(what, "dv", dv, ref.dv, ref.tol_dv, B * S * Hkv * Dv);
        rg_check(what, "dsinks", dsinks, ref.dsinks, ref.tol_dsinks, Hq);
        rg_check(what, "dbias", dbias, ref.dbias, ref.tol_dbias, 2 * T * S);
        memset(dq, 0, sizeof(float) * (size_t)(B * T * Hq * D));
        memset(dk, 0, sizeof(float) * (size_t)(B * S * Hkv * D));
        memset(dv, 0, sizeof(float) * (size_t)(B * S * Hkv * Dv));
        memset(dsinks, 0, sizeof(float) * Hq);
        memset(dbias, 0, sizeof(float) * 2 * T * S);
    }
    rg_grads_free(&ref);
    rg_inputs_free(&in);
    free(o), free(lse), free(delta), free(dout), free(dq), free(dk), free(dv), free(dsinks);
    free(dbias);
    tc_free(&tp);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_combinations),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_everything_at_once),
        cmocka_unit_test(test_threads),
        cmocka_unit_test_teardown(test_flash_panels, unset_panel_env),
        cmocka_unit_test(test_mha),
        cmocka_unit_test(test_gqa_mqa_dv),
        cmocka_unit_test(test_fused_qkv),
        cmocka_unit_test(test_scale),
        cmocka_unit_test(test_empty_sizes),
        cmocka_unit_test(test_causal_offsets),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_chunk),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_mask_broadcast),
        cmocka_unit_test(test_bias_broadcast),
        cmocka_unit_test(test_sinks),
        cmocka_unit_test(test_softcap),
        cmocka_unit_test(test_huge_logits),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_fully_masked_rows),
        cmocka_unit_test(test_after_library_forward),
        cmocka_unit_test(test_argument_errors),
        cmocka_unit_test(test_inconsistent_lse),
        cmocka_unit_test(test_accumulate_contract),
    };
    int failed = tl_run_spread("backward", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
