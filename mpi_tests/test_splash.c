/* Splash attention forward against the float64 reference: every mask kind
 * and combination, mask objects ANDed with the options' predicates, GQA /
 * MQA (including the per-head and sliced-group paths), every logit option,
 * offsets, odd lengths and block sizes, fully masked rows, EMPTY blocks never
 * read, info reuse, sdpa's choice, and front-door errors. The reference sees
 * each mask object as the equivalent dense boolean mask, built here from the
 * naive predicate (test_splash_masks.h). Tests are spread over the ranks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cases.h"
#include "test_splash_masks.h"

/* ------------------------------------------------------------------ harness */

typedef struct run_cfg {
    int bq, bkv;  /* 0 = defaults */
    char layout;  /* 't' BTHD, 'h' BHTD */
    int threads;
    int use_info; /* 1: build the info here and call mattn_splash_forward_info */
    int null_mask; /* 1: mattn_splash_forward with mask NULL (from the options) */
} run_cfg;

/* Runs splash; o (BTHD) and lse must hold the outputs. Returns the status. */
static int run_splash(const tc_problem *p, const mattn_splash_mask *m, const run_cfg *cfg,
                      float *o_bthd, float *lse)
{
    int64_t B = p->B, T = p->T, S = p->S;
    float *qb = tl_alloc(sizeof(float) * (size_t)(B * T * p->Hq * p->D + 1));
    float *kb = tl_alloc(sizeof(float) * (size_t)(B * S * p->Hkv * p->D + 1));
    float *vb = tl_alloc(sizeof(float) * (size_t)(B * S * p->Hkv * p->Dv + 1));
    float *ob = tl_alloc(sizeof(float) * (size_t)(B * T * p->Hq * p->Dv + 1));
    mattn_tensor q = tl_view(qb, cfg->layout, B, T, p->Hq, p->D);
    mattn_tensor k = tl_view(kb, cfg->layout, B, S, p->Hkv, p->D);
    mattn_tensor v = tl_view(vb, cfg->layout, B, S, p->Hkv, p->Dv);
    mattn_tensor o = tl_view(ob, cfg->layout, B, T, p->Hq, p->Dv);
    tl_scatter(p->q, &q), tl_scatter(p->k, &k), tl_scatter(p->v, &v);
    /* NaN in every output: an element left unwritten fails the check. */
    for (int64_t x = 0; x < B * T * p->Hq * p->Dv; x++)
        ob[x] = NAN;
    for (int64_t x = 0; x < B * p->Hq * T; x++)
        lse[x] = NAN;
    mattn_options opts = tc_options(p);
    opts.threads = cfg->threads;
    int rc;
    if (cfg->use_info) {
        mattn_splash_info_options io = mattn_splash_info_options_default();
        io.q_offset = p->q_offset, io.kv_offset = p->kv_offset;
        io.block_q = cfg->bq, io.block_kv = cfg->bkv;
        mattn_splash_info *info = NULL;
        rc = mattn_splash_info_create(m, T, S, &io, &info);
        if (rc == MATTN_OK)
            rc = mattn_splash_forward_info(&q, &k, &v, &o, lse, info, &opts);
        mattn_splash_info_free(info);
    } else {
        opts.block_q = cfg->bq, opts.block_kv = cfg->bkv;
        rc = mattn_splash_forward(&q, &k, &v, &o, lse, cfg->null_mask ? NULL : m, &opts);
    }
    if (rc == MATTN_OK)
        tl_gather(o_bthd, &o);
    free(qb), free(kb), free(vb), free(ob);
    return rc;
}

/* Splash over `call` with mask object t must match the float64 reference. */
static void check_splash(const tc_problem *call, const tm *t, const run_cfg *cfg, const char *what)
{
    tc_problem ref = tm_reference_of(call, t);
    size_t no = (size_t)(call->B * call->T * call->Hq * call->Dv) + 1;
    size_t nl = (size_t)(call->B * call->Hq * call->T) + 1;
    float *o = tl_alloc(sizeof(float) * no), *lse = tl_alloc(sizeof(float) * nl);
    double *ro = tl_alloc(sizeof(double) * no), *rl = tl_alloc(sizeof(double) * nl);
    double *to = tl_alloc(sizeof(double) * no), *tlse = tl_alloc(sizeof(double) * nl);
    mattn_splash_mask *m = tm_build(t);
    int rc = run_splash(call, m, cfg, o, lse);
    if (rc != MATTN_OK)
        fail_msg("%s: splash failed: %s", what, mattn_last_error());
    tc_reference(&ref, ro, rl, NULL, to, tlse, NULL);
    char label[160];
    snprintf(label, sizeof label, "%s (blocks %dx%d, layout %c, threads %d, info %d)", what,
             cfg->bq, cfg->bkv, cfg->layout, cfg->threads, cfg->use_info);
    tc_check_o(label, call, o, ro, to);
    tc_check_lse(label, call, lse, rl, tlse);
    mattn_splash_mask_free(m);
    free(ref.mask);
    free(o), free(lse), free(ro), free(rl), free(to), free(tlse);
}

/* A few block shapes, dividing and not dividing the lengths, both layouts. */
static void check_configs(const tc_problem *call, const tm *t, const char *what)
{
    static const run_cfg cfgs[] = {
        {0, 0, 't', 1, 0, 0}, {16, 16, 'h', 1, 1, 0}, {13, 29, 't', 2, 1, 0}, {8, 64, 't', 1, 0, 0},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
        check_splash(call, t, &cfgs[i], what);
}

/* ------------------------------------------------------------------ mask kinds */

static void test_band_kinds(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(1, 2, 75, 90, 4, 2, 16, 24);
    check_configs(&p, tm_full(), "full");
    check_configs(&p, tm_causal(0), "causal");
    check_configs(&p, tm_causal(7), "causal +7");
    check_configs(&p, tm_causal(-3), "causal -3 (first rows empty)");
    check_configs(&p, tm_local(9, 0), "local (9, 0)");
    check_configs(&p, tm_local(4, 11), "local (4, 11)");
    check_configs(&p, tm_local(-1, 5), "local (-1, 5)");
    check_configs(&p, tm_local(0, 0), "local (0, 0)");
    check_configs(&p, tm_chunked(8), "chunked 8");
    check_configs(&p, tm_chunked(13), "chunked 13");
    check_configs(&p, tm_chunked(1), "chunked 1");
    tc_free(&p);
    tm_free_all();
}

static void test_dense_kinds(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(2);
    tc_problem p = tc_seeded(2, 2, 61, 77, 3, 3, 16, 16);
    uint8_t *bits = tm_random_bits(&r, 61 * 77, 0.6);
    check_configs(&p, tm_dense(bits, 61, 77, 0, 0), "dense random");
    uint8_t *cells = tc_block_sparse_bits(61, 77);
    check_configs(&p, tm_dense(cells, 61, 77, 0, 0), "dense block-sparse");
    check_configs(&p, tm_dense(bits, 40, 50, 10, 20), "dense placed off-origin");
    /* Per head: three different kinds. */
    tm *heads[3] = {tm_causal(0), tm_dense(bits, 61, 77, 0, 0), tm_local(3, 3)};
    check_configs(&p, tm_per_head(heads, 3), "per-head");
    free(bits), free(cells);
    tc_free(&p);
    tm_free_all();
}

static void test_combinations(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(3);
    tc_problem p = tc_seeded(3, 1, 70, 70, 4, 1, 16, 16);
    uint8_t *bits = tm_random_bits(&r, 70 * 70, 0.5);
    tm *dense = tm_dense(bits, 70, 70, 0, 0);
    check_configs(&p, tm_pair(TM_AND, tm_causal(0), tm_local(10, 0)), "causal & local");
    check_configs(&p, tm_pair(TM_OR, tm_local(3, 3), tm_chunked(16)), "local | chunked");
    check_configs(&p, tm_pair(TM_AND, tm_chunked(6), tm_chunked(10)), "chunked & chunked");
    check_configs(&p, tm_pair(TM_OR, tm_causal(-20), dense), "causal(-20) | dense");
    check_configs(&p, tm_pair(TM_AND, dense, tm_chunked(12)), "dense & chunked");
    check_configs(&p, tm_pair(TM_OR, tm_pair(TM_AND, tm_causal(0), tm_local(5, 0)), tm_local(0, 2)),
                  "nested");
    tm *heads[4] = {tm_causal(0), tm_full(), tm_chunked(9), tm_pair(TM_OR, tm_local(1, 1), dense)};
    check_configs(&p, tm_pair(TM_AND, tm_per_head(heads, 4), tm_local(30, 30)),
                  "per-head & local (MQA)");
    free(bits);
    tc_free(&p);
    tm_free_all();
}

/* ------------------------------------------------------------------ with the options */

/* The options' predicates AND the mask object; segment ids with every kind. */
static void test_options_and_mask(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(4);
    tc_problem p = tc_make(&r, 2, 66, 66, 4, 2, 16, 16, 1.0);
    p.causal = 1;
    check_configs(&p, tm_local(-1, 8), "opts causal & local(-1, 8)");
    p.causal = 0, p.window_left = 12, p.window_right = 3;
    check_configs(&p, tm_chunked(16), "opts window & chunked");
    p.window_left = p.window_right = -1, p.chunk = 20;
    check_configs(&p, tm_causal(0), "opts chunk & causal");
    p.chunk = 0;
    p.mask_b = 2, p.mask_h = 1; /* a per-batch option mask stays element-wise */
    p.mask = tm_random_bits(&r, 2 * 66 * 66, 0.7);
    check_configs(&p, tm_causal(0), "opts per-batch mask & causal");
    free(p.mask);
    p.mask = NULL;
    tc_add_segments(&p);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 66; i++)
            p.q_seg[b * 66 + i] = p.kv_seg[b * 66 + i] = i < 60 ? (i + 7 * b) / 17 : -1;
    uint8_t *bits = tm_random_bits(&r, 66 * 66, 0.6);
    tm *kinds[] = {tm_full(), tm_causal(0), tm_local(5, 5), tm_chunked(10),
                   tm_dense(bits, 66, 66, 0, 0), tm_pair(TM_OR, tm_causal(-30), tm_local(2, 0))};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        check_configs(&p, kinds[i], "segments & mask");
    free(bits);
    tc_free(&p);
    tm_free_all();
}

static void test_logit_options(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(5);
    tc_problem p = tc_make(&r, 2, 57, 64, 4, 2, 24, 16, 2.0);
    p.sinks = tl_alloc(sizeof(float) * 4);
    p.sinks[0] = 0.5f, p.sinks[1] = -2.0f, p.sinks[2] = 3.0f, p.sinks[3] = -INFINITY;
    check_configs(&p, tm_causal(-4), "sinks (rows with only the sink)");
    p.softcap = 4.0;
    check_configs(&p, tm_local(6, 6), "sinks + softcap");
    p.scale = 0.3;
    tc_random_bias(&r, &p, 1, 4, 2.0);
    check_configs(&p, tm_chunked(12), "scale + bias");
    p.dropout_p = 0.35f, p.seed = 99, p.drop_b0 = 1, p.drop_h0 = 4;
    check_configs(&p, tm_pair(TM_OR, tm_causal(0), tm_local(0, 3)), "dropout and everything");
    tc_free(&p);
    tm_free_all();
}

static void test_offsets(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(6);
    tc_problem p = tc_seeded(6, 1, 40, 100, 2, 1, 16, 16);
    p.q_offset = 60; /* bottom-right causal: chunked prefill */
    check_configs(&p, tm_causal(0), "causal bottom-right");
    p.q_offset = 1000, p.kv_offset = 990;
    check_configs(&p, tm_chunked(32), "chunked at 1000/990");
    p.q_offset = -20, p.kv_offset = -33; /* negative positions: floor division */
    check_configs(&p, tm_chunked(7), "chunked at negative positions");
    uint8_t *bits = tm_random_bits(&r, 40 * 100, 0.5);
    check_configs(&p, tm_dense(bits, 40, 100, -20, -33), "dense at the offsets");
    free(bits);
    tc_free(&p);
    tm_free_all();
}

/* ------------------------------------------------------------------ heads, lengths */

static void test_gqa_mqa(void **state)
{
    (void)state;
    /* GQA with Dv != D; MQA with 8 q heads: at block_q 128 the 1024 rows
     * exceed the per-task cap, so the group is cut into slices. */
    tc_problem p = tc_seeded(7, 1, 150, 140, 6, 2, 16, 40);
    check_configs(&p, tm_causal(0), "GQA causal");
    tc_free(&p);
    p = tc_seeded(8, 1, 150, 160, 8, 1, 8, 8);
    run_cfg big = {128, 32, 't', 2, 1, 0};
    check_splash(&p, tm_causal(0), &big, "MQA sliced group");
    check_configs(&p, tm_local(20, 5), "MQA local");
    tm *heads[8];
    for (int h = 0; h < 8; h++)
        heads[h] = h % 2 ? tm_causal(-h) : tm_local(h, h);
    check_splash(&p, tm_per_head(heads, 8), &big, "MQA per-head sliced");
    check_configs(&p, tm_per_head(heads, 8), "MQA per-head");
    tc_free(&p);
    tm_free_all();
}

static void test_lengths(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 300}, {300, 1}, {129, 257}, {5, 0}, {0, 7}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        tc_problem p = tc_seeded(20 + i, 2, shapes[i][0], shapes[i][1], 4, 2, 8, 8);
        p.q_offset = p.S - p.T; /* bottom-right: the T=1 row is a decode step */
        check_configs(&p, tm_causal(0), "lengths causal");
        check_configs(&p, tm_local(7, 0), "lengths local");
        check_configs(&p, tm_full(), "lengths full");
        tc_free(&p);
    }
    tc_problem p = tc_seeded(30, 0, 5, 5, 2, 2, 8, 8); /* B = 0 */
    check_configs(&p, tm_causal(0), "B = 0");
    tc_free(&p);
    /* The largest blocks allowed on a tiny problem: one block of the length
     * (they used to take 4 GiB for the tile and 16 GiB of workspace). */
    static const run_cfg huge[] = {{65536, 65536, 't', 1, 0, 0}, {65536, 65536, 'h', 1, 1, 0},
                                   {65536, 3, 't', 2, 1, 0}};
    p = tc_seeded(31, 2, 4, 5, 2, 1, 8, 8);
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++)
        check_splash(&p, tm_causal(0), &huge[i], "blocks beyond the lengths");
    tc_free(&p);
    tm_free_all();
}

/* No batch entry at lengths 2^33: nothing to compute and nothing sized by
 * T or S, for every front door, forward and backward (splash built its
 * mask info first and ran for hours; sdpa chose through an overflowed
 * T * S; vanilla backward sized its workspace by S). A mask info that big
 * is refused at once. */
static void test_empty_batch_huge_lengths(void **state)
{
    (void)state;
    const int64_t L = (int64_t)1 << 33;
    mattn_tensor q = mattn_tensor_bthd(NULL, 0, L, 2, 8), k = mattn_tensor_bthd(NULL, 0, L, 1, 8);
    mattn_tensor o = q, dout = q, dq = q, dk = k, dv = k;
    float sinks[2] = {0.5f, -1.0f}, dsinks[2] = {7, 7}, lse[1] = {0};
    mattn_options opts = mattn_options_default();
    opts.causal = 1;
    opts.sinks = sinks;
    assert_int_equal(mattn_vanilla_forward(&q, &k, &k, &o, NULL, NULL, &opts), MATTN_OK);
    assert_int_equal(mattn_flash_forward(&q, &k, &k, &o, NULL, &opts), MATTN_OK);
    assert_int_equal(mattn_sdpa_forward(&q, &k, &k, &o, NULL, &opts, NULL), MATTN_OK);
    assert_int_equal(mattn_splash_forward(&q, &k, &k, &o, NULL, NULL, &opts), MATTN_OK);
    for (int op = 0; op < 4; op++) {
        dsinks[0] = dsinks[1] = 7;
        int rc = op == 0   ? mattn_vanilla_backward(&q, &k, &k, &o, lse, &dout, &dq, &dk, &dv,
                                                    dsinks, NULL, &opts)
                 : op == 1 ? mattn_flash_backward(&q, &k, &k, &o, lse, &dout, &dq, &dk, &dv,
                                                  dsinks, NULL, &opts)
                 : op == 2 ? mattn_sdpa_backward(&q, &k, &k, &o, lse, &dout, &dq, &dk, &dv,
                                                 dsinks, NULL, &opts, NULL)
                           : mattn_splash_backward(&q, &k, &k, &o, lse, &dout, &dq, &dk, &dv,
                                                   dsinks, NULL, NULL, &opts);
        if (rc != MATTN_OK)
            fail_msg("backward %d with B = 0: %s", op, mattn_last_error());
        assert_true(dsinks[0] == 0.0f && dsinks[1] == 0.0f); /* a sum over no rows */
    }
    mattn_splash_mask *causal;
    assert_int_equal(mattn_splash_mask_causal(0, &causal), MATTN_OK);
    mattn_splash_info_options io = mattn_splash_info_options_default();
    mattn_splash_info *info = NULL;
    assert_int_equal(mattn_splash_info_create(causal, L, L, &io, &info), MATTN_ERR_SHAPE);
    assert_non_null(strstr(mattn_last_error(), "use larger blocks"));
    assert_null(info);
    /* blocks beyond the lengths are the lengths (one block each way) */
    io.block_q = io.block_kv = 65536;
    assert_int_equal(mattn_splash_info_create(causal, 4, 5, &io, &info), MATTN_OK);
    mattn_splash_info_stats st;
    mattn_splash_info_describe(info, &st);
    assert_int_equal(st.block_q, 4);
    assert_int_equal(st.block_kv, 5);
    mattn_splash_info_free(info);
    mattn_splash_mask_free(causal);
}

/* Rows that see nothing: o exactly 0 and lse exactly -inf (or the sink). */
static void test_fully_masked_rows(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(40, 1, 20, 20, 2, 2, 8, 8);
    mattn_splash_mask *m;
    assert_int_equal(mattn_splash_mask_causal(-6, &m), MATTN_OK); /* rows 0-5 see nothing */
    float o[20 * 2 * 8], lse[2 * 20];
    run_cfg cfg = {4, 4, 't', 1, 1, 0};
    assert_int_equal(run_splash(&p, m, &cfg, o, lse), MATTN_OK);
    for (int i = 0; i < 6; i++)
        for (int h = 0; h < 2; h++) {
            assert_true(lse[h * 20 + i] == -INFINITY);
            for (int d = 0; d < 8; d++)
                assert_true(o[(i * 2 + h) * 8 + d] == 0.0f);
        }
    p.sinks = tl_alloc(sizeof(float) * 2);
    p.sinks[0] = 1.5f, p.sinks[1] = -0.25f;
    assert_int_equal(run_splash(&p, m, &cfg, o, lse), MATTN_OK);
    for (int i = 0; i < 6; i++)
        for (int h = 0; h < 2; h++) {
            assert_true(lse[h * 20 + i] == p.sinks[h]);
            for (int d = 0; d < 8; d++)
                assert_true(o[(i * 2 + h) * 8 + d] == 0.0f);
        }
    mattn_splash_mask_free(m);
    tc_free(&p);
}

/* ------------------------------------------------------------------ equivalences */

static void max_diff_check(const float *a, const float *b, int64_t n, double tol, const char *what)
{
    for (int64_t x = 0; x < n; x++)
        if (!(fabs((double)a[x] - (double)b[x]) <= tol) && !(a[x] == b[x]))
            fail_msg("%s: element %lld: %.9g vs %.9g", what, (long long)x, a[x], b[x]);
}

/* splash with a mask object == flash with the equivalent options, to fp32
 * rounding (same dropout decisions too), for each documented equivalence. */
static void test_equals_flash(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(50, 2, 100, 100, 4, 2, 16, 16);
    p.dropout_p = 0.4f, p.seed = 3;
    tl_rng r = tl_rng_make(51);
    tc_random_sinks(&r, &p, 1.0);
    int64_t no = 2 * 100 * 4 * 16, nl = 2 * 4 * 100;
    float *o1 = tl_alloc(sizeof(float) * (size_t)no), *o2 = tl_alloc(sizeof(float) * (size_t)no);
    float *l1 = tl_alloc(sizeof(float) * (size_t)nl), *l2 = tl_alloc(sizeof(float) * (size_t)nl);
    mattn_tensor q = mattn_tensor_bthd(p.q, 2, 100, 4, 16), k = mattn_tensor_bthd(p.k, 2, 100, 2, 16),
                 v = mattn_tensor_bthd(p.v, 2, 100, 2, 16), to = mattn_tensor_bthd(o1, 2, 100, 4, 16);
    uint8_t *bits = tm_random_bits(&r, 100 * 100, 0.5);
    for (int c = 0; c < 4; c++) {
        mattn_options fo = tc_options(&p), so = tc_options(&p);
        mattn_splash_mask *m = NULL;
        switch (c) {
        case 0:
            fo.causal = 1;
            assert_int_equal(mattn_splash_mask_causal(0, &m), MATTN_OK);
            break;
        case 1:
            fo.window_left = 7, fo.window_right = 2;
            assert_int_equal(mattn_splash_mask_local(7, 2, &m), MATTN_OK);
            break;
        case 2:
            fo.causal = 1, fo.chunk = 24;
            assert_int_equal(mattn_splash_mask_chunked(24, &m), MATTN_OK);
            break;
        case 3:
            fo.mask = mattn_mask_dense(bits, 1, 1, 100, 100);
            assert_int_equal(mattn_splash_mask_dense(bits, 100, 100, &m), MATTN_OK);
            break;
        }
        to.data = o1;
        assert_int_equal(mattn_flash_forward(&q, &k, &v, &to, l1, &fo), MATTN_OK);
        to.data = o2;
        assert_int_equal(mattn_splash_forward(&q, &k, &v, &to, l2, m, &so), MATTN_OK);
        max_diff_check(o1, o2, no, 2e-6, "splash vs flash o");
        max_diff_check(l1, l2, nl, 2e-6, "splash vs flash lse");
        mattn_splash_mask_free(m);
    }
    free(bits), free(o1), free(o2), free(l1), free(l2);
    tc_free(&p);
}

/* mask NULL: the mask comes from the options' structural predicates (and a
 * boolean mask shared by the batch), which the reference applies as usual. */
static void test_mask_from_options(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(55);
    tc_problem p = tc_make(&r, 2, 70, 83, 4, 2, 16, 16, 1.0);
    run_cfg cfgs[] = {{0, 0, 't', 1, 0, 1}, {16, 32, 'h', 2, 0, 1}, {13, 7, 't', 1, 0, 1}};
    tm *full = tm_full();
    for (int c = 0; c < 7; c++) {
        p.causal = c == 0 || c == 2 || c == 4 || c == 6;
        p.window_left = c == 1 ? 9 : -1, p.window_right = c == 1 ? 4 : -1;
        p.chunk = c == 2 ? 16 : 0;
        p.q_offset = c == 4 ? 13 : 0;
        if (c == 3 || c == 4 || c == 6) { /* shared by the batch; c = 6: per batch entry */
            p.mask_b = c == 6 ? 2 : 1, p.mask_h = c == 3 ? 4 : 1;
            p.mask = tm_random_bits(&r, p.mask_b * p.mask_h * 70 * 83, 0.5);
        }
        char what[64];
        snprintf(what, sizeof what, "mask from the options, case %d", c);
        for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
            check_splash(&p, full, &cfgs[i], what); /* case 5: nothing, all FULL */
        free(p.mask);
        p.mask = NULL;
    }
    tc_free(&p);
    tm_free_all();
}

/* ------------------------------------------------------------------ skipping */

/* EMPTY blocks are never read: K and V rows that only EMPTY blocks cover
 * hold NaN, which any GEMM over them would spread into the output. */
static void test_empty_blocks_not_read(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(60, 1, 64, 96, 2, 1, 8, 8);
    /* Keys 32..63 are masked for every query: with 16-key blocks, kv blocks
     * 2 and 3 are EMPTY everywhere. */
    uint8_t *bits = tl_alloc(64 * 96);
    for (int i = 0; i < 64; i++)
        for (int j = 0; j < 96; j++)
            bits[i * 96 + j] = (uint8_t)(j < 32 || j >= 64);
    tm *t = tm_dense(bits, 64, 96, 0, 0);
    tc_problem ref = tm_reference_of(&p, t);
    double *ro = tl_alloc(sizeof(double) * 64 * 2 * 8), *rl = tl_alloc(sizeof(double) * 2 * 64);
    double *to = tl_alloc(sizeof(double) * 64 * 2 * 8), *tl = tl_alloc(sizeof(double) * 2 * 64);
    tc_reference(&ref, ro, rl, NULL, to, tl, NULL);
    tc_nan_keys(&p, 32, 64);
    float o[64 * 2 * 8], lse[2 * 64];
    mattn_splash_mask *m = tm_build(t);
    run_cfg cfg = {16, 16, 't', 1, 1, 0};
    assert_int_equal(run_splash(&p, m, &cfg, o, lse), MATTN_OK);
    tc_check_o("NaN keys in EMPTY blocks", &p, o, ro, to);
    tc_check_lse("NaN keys in EMPTY blocks", &p, lse, rl, tl);
    mattn_splash_mask_free(m);
    /* Top-left causal with T < S: keys from T on are in EMPTY blocks. */
    tc_free(&p);
    p = tc_seeded(61, 1, 40, 80, 2, 2, 8, 8);
    t = tm_causal(0);
    free(ref.mask);
    ref = tm_reference_of(&p, t);
    tc_reference(&ref, ro, rl, NULL, to, tl, NULL);
    tc_nan_keys(&p, 48, 80);
    m = tm_build(t);
    assert_int_equal(run_splash(&p, m, &cfg, o, lse), MATTN_OK);
    tc_check_o("NaN keys past a top-left causal edge", &p, o, ro, to);
    mattn_splash_mask_free(m);
    free(ref.mask), free(bits), free(ro), free(rl), free(to), free(tl);
    tc_free(&p);
    tm_free_all();
}

/* One info serves many calls (different data, threads, strides). */
static void test_info_reuse(void **state)
{
    (void)state;
    mattn_splash_mask *m;
    assert_int_equal(mattn_splash_mask_local(16, 0, &m), MATTN_OK);
    mattn_splash_info_options io = mattn_splash_info_options_default();
    io.block_q = 32, io.block_kv = 16;
    mattn_splash_info *info;
    assert_int_equal(mattn_splash_info_create(m, 90, 90, &io, &info), MATTN_OK);
    mattn_splash_mask_free(m); /* the info needs the mask no more */
    tm *t = tm_local(16, 0);
    const size_t nq = 2 * 90 * 2 * 16, nl = 2 * 2 * 90;
    for (int it = 0; it < 3; it++) {
        tc_problem p = tc_seeded(70 + it, 2, 90, 90, 2, 1, 16, 16);
        tc_problem ref = tm_reference_of(&p, t);
        float *qbuf = tl_alloc(sizeof(float) * nq), *o = tl_alloc(sizeof(float) * nq);
        float *lse = tl_alloc(sizeof(float) * nl);
        mattn_tensor q = mattn_tensor_bhtd(qbuf, 2, 90, 2, 16); /* q in BHTD, the rest BTHD */
        mattn_tensor k = mattn_tensor_bthd(p.k, 2, 90, 1, 16), v = mattn_tensor_bthd(p.v, 2, 90, 1, 16);
        mattn_tensor to = mattn_tensor_bthd(o, 2, 90, 2, 16);
        tl_scatter(p.q, &q);
        mattn_options opts = mattn_options_default();
        opts.threads = 1 + it % 2;
        assert_int_equal(mattn_splash_forward_info(&q, &k, &v, &to, lse, info, &opts), MATTN_OK);
        double *ro = tl_alloc(sizeof(double) * nq), *rl = tl_alloc(sizeof(double) * nl);
        double *tol = tl_alloc(sizeof(double) * nq), *tll = tl_alloc(sizeof(double) * nl);
        tc_reference(&ref, ro, rl, NULL, tol, tll, NULL);
        tc_check_o("info reuse", &p, o, ro, tol);
        tc_check_lse("info reuse", &p, lse, rl, tll);
        free(qbuf), free(o), free(lse), free(ro), free(rl), free(tol), free(tll), free(ref.mask);
        tc_free(&p);
    }
    mattn_splash_info_free(info);
    tm_free_all();
}

/* ------------------------------------------------------------------ sdpa */

static void test_sdpa_choice(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(80, 1, 512, 512, 2, 1, 16, 16);
    float *o = tl_alloc(sizeof(float) * 512 * 2 * 16);
    mattn_tensor q = mattn_tensor_bthd(p.q, 1, 512, 2, 16), k = mattn_tensor_bthd(p.k, 1, 512, 1, 16),
                 v = mattn_tensor_bthd(p.v, 1, 512, 1, 16), to = mattn_tensor_bthd(o, 1, 512, 2, 16);
    mattn_options opts = mattn_options_default();
    mattn_kernel chosen = (mattn_kernel)-1;
    opts.causal = 1; /* 10 of 16 blocks: splash */
    assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, NULL, &opts, &chosen), MATTN_OK);
    assert_int_equal(chosen, MATTN_KERNEL_SPLASH);
    opts.causal = 0, opts.window_left = 1000; /* covers everything: flash */
    assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, NULL, &opts, &chosen), MATTN_OK);
    assert_int_equal(chosen, MATTN_KERNEL_FLASH);
    opts.window_left = -1;
    tl_rng r = tl_rng_make(81);
    uint8_t *bits = tm_random_bits(&r, 512 * 512, 0.5); /* no empty block: flash */
    opts.mask = mattn_mask_dense(bits, 1, 1, 512, 512);
    assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, NULL, &opts, &chosen), MATTN_OK);
    assert_int_equal(chosen, MATTN_KERNEL_FLASH);
    for (int i = 0; i < 512; i++) /* a causal mask given as a dense array: splash */
        for (int j = 0; j < 512; j++)
            bits[i * 512 + j] = (uint8_t)(j <= i);
    assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, NULL, &opts, &chosen), MATTN_OK);
    assert_int_equal(chosen, MATTN_KERNEL_SPLASH);
    free(bits);
    free(o);
    tc_free(&p);
    /* And its answers: sdpa through splash against the reference, with the
     * boolean mask per head, the structural options and offsets together. */
    p = tc_seeded(82, 2, 200, 220, 4, 2, 16, 16);
    p.causal = 1, p.q_offset = 20, p.kv_offset = 3;
    tc_striped_mask_segments(&p);
    size_t no = 2 * 200 * 4 * 16, nl = 2 * 4 * 200;
    float *out = tl_alloc(sizeof(float) * no), *lse = tl_alloc(sizeof(float) * nl);
    double *ro = tl_alloc(sizeof(double) * no), *rl = tl_alloc(sizeof(double) * nl);
    double *tol = tl_alloc(sizeof(double) * no), *tll = tl_alloc(sizeof(double) * nl);
    tc_reference(&p, ro, rl, NULL, tol, tll, NULL);
    q = mattn_tensor_bthd(p.q, 2, 200, 4, 16), k = mattn_tensor_bthd(p.k, 2, 220, 2, 16);
    v = mattn_tensor_bthd(p.v, 2, 220, 2, 16), to = mattn_tensor_bthd(out, 2, 200, 4, 16);
    opts = tc_options(&p);
    opts.block_q = opts.block_kv = 32, opts.threads = 2;
    assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, lse, &opts, &chosen), MATTN_OK);
    assert_int_equal(chosen, MATTN_KERNEL_SPLASH);
    tc_check_o("sdpa via splash", &p, out, ro, tol);
    tc_check_lse("sdpa via splash", &p, lse, rl, tll);
    free(out), free(lse), free(ro), free(rl), free(tol), free(tll);
    assert_int_equal(tc_run_and_check("sdpa", &p, 'h', 1), MATTN_OK);
    tc_free(&p);
}

/* ------------------------------------------------------------------ errors */

static void test_front_door_errors(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(90, 1, 32, 48, 4, 2, 8, 8);
    float o[32 * 4 * 8], lse[4 * 32];
    mattn_tensor q = mattn_tensor_bthd(p.q, 1, 32, 4, 8), k = mattn_tensor_bthd(p.k, 1, 48, 2, 8),
                 v = mattn_tensor_bthd(p.v, 1, 48, 2, 8), to = mattn_tensor_bthd(o, 1, 32, 4, 8);
    mattn_options opts = mattn_options_default();
    mattn_splash_mask *m, *ph;
    assert_int_equal(mattn_splash_mask_causal(0, &m), MATTN_OK);
    mattn_splash_mask *three[3] = {m, m, m};
    assert_int_equal(mattn_splash_mask_per_head(three, 3, &ph), MATTN_OK);
    tl_expect_error(mattn_splash_forward(&q, &k, &v, &to, lse, ph, &opts), MATTN_ERR_SHAPE,
                    "3-head mask, 4 q heads");
    tl_expect_error(mattn_splash_forward_info(&q, &k, &v, &to, lse, NULL, &opts), MATTN_ERR_ARG,
                    "NULL info");
    mattn_splash_info_options io = mattn_splash_info_options_default();
    mattn_splash_info *info;
    assert_int_equal(mattn_splash_info_create(m, 32, 40, &io, &info), MATTN_OK);
    tl_expect_error(mattn_splash_forward_info(&q, &k, &v, &to, lse, info, &opts), MATTN_ERR_SHAPE,
                    "info for another S");
    mattn_splash_info_free(info);
    io.q_offset = 16;
    assert_int_equal(mattn_splash_info_create(m, 32, 48, &io, &info), MATTN_OK);
    tl_expect_error(mattn_splash_forward_info(&q, &k, &v, &to, lse, info, &opts), MATTN_ERR_ARG,
                    "info for another q_offset");
    opts.q_offset = 16;
    assert_int_equal(mattn_splash_forward_info(&q, &k, &v, &to, lse, info, &opts), MATTN_OK);
    opts.block_q = 8;
    tl_expect_error(mattn_splash_forward_info(&q, &k, &v, &to, lse, info, &opts), MATTN_ERR_ARG,
                    "block size mismatch");
    mattn_splash_info_free(info);
    io.q_offset = 0, opts.q_offset = 0, opts.block_q = 0;
    assert_int_equal(mattn_splash_info_create(ph, 32, 48, &io, &info), MATTN_OK);
    tl_expect_error(mattn_splash_forward_info(&q, &k, &v, &to, lse, info, &opts), MATTN_ERR_SHAPE,
                    "3-head info, 4 q heads");
    mattn_splash_info_free(info);
    /* The usual argument checks run first. */
    opts.dropout_p = 1.0f;
    tl_expect_error(mattn_splash_forward(&q, &k, &v, &to, lse, m, &opts), MATTN_ERR_ARG,
                    "dropout 1");
    opts.dropout_p = 0.0f;
    k.heads = 3;
    tl_expect_error(mattn_splash_forward(&q, &k, &v, &to, lse, m, &opts), MATTN_ERR_SHAPE,
                    "Hq % Hkv");
    mattn_splash_mask_free(m);
    mattn_splash_mask_free(ph);
    tc_free(&p);
}

/* ------------------------------------------------------------------ random */

/* Random trees of random kinds over random problems and option mixes. */
static tm *random_tree(tl_rng *r, int depth, uint8_t *bits, int64_t T, int64_t S, int64_t Hq)
{
    int64_t kind = tl_int(r, depth > 0 ? 8 : 6);
    switch (kind) {
    case 0:
        return tm_causal(tl_int(r, 21) - 10);
    case 1:
        return tm_local(tl_int(r, 20) - 1, tl_int(r, 20) - 1);
    case 2:
        return tm_chunked(1 + tl_int(r, 30));
    case 3:
        return tm_dense(bits, T, S, 0, 0);
    case 4:
        return tm_full();
    case 5: {
        if (Hq == 1 || depth == 0)
            return tm_causal(0);
        tm **hs = tl_alloc(sizeof(tm *) * (size_t)Hq);
        for (int64_t h = 0; h < Hq; h++)
            hs[h] = random_tree(r, 0, bits, T, S, 1);
        tm *t = tm_per_head(hs, Hq);
        free(hs);
        return t;
    }
    default:
        return tm_pair(kind == 6 ? TM_AND : TM_OR, random_tree(r, depth - 1, bits, T, S, Hq),
                       random_tree(r, depth - 1, bits, T, S, Hq));
    }
}

static void test_random(void **state)
{
    (void)state;
    for (int iter = 0; iter < 30; iter++) {
        tl_rng r = tl_rng_make(500 + iter);
        int64_t Hkv = 1 + tl_int(&r, 2), G = 1 + tl_int(&r, 4);
        int64_t T = 1 + tl_int(&r, 120), S = 1 + tl_int(&r, 120), B = 1 + tl_int(&r, 2);
        tc_problem p = tc_make(&r, B, T, S, Hkv * G, Hkv, 1 + tl_int(&r, 24), 1 + tl_int(&r, 24), 1.0);
        p.q_offset = tl_int(&r, 2) ? S - T : tl_int(&r, 20) - 5;
        uint8_t *bits = tm_random_bits(&r, T * S, 0.6);
        tm *t = random_tree(&r, 2, bits, T, S, p.Hq);
        if (tl_int(&r, 3) == 0)
            p.causal = 1;
        if (tl_int(&r, 3) == 0)
            tc_random_segment_ids(&r, &p, 3);
        if (tl_int(&r, 3) == 0)
            tc_random_sinks(&r, &p, 2.0);
        if (tl_int(&r, 3) == 0)
            p.softcap = 2.0 + 5.0 * tl_uniform(&r);
        if (tl_int(&r, 3) == 0)
            p.dropout_p = (float)(0.7 * tl_uniform(&r)), p.seed = (uint64_t)iter;
        run_cfg cfg = {(int)tl_int(&r, 40), (int)tl_int(&r, 40), "th"[tl_int(&r, 2)],
                       1 + (int)tl_int(&r, 2), (int)tl_int(&r, 2), 0};
        char what[64];
        snprintf(what, sizeof what, "random %d", iter);
        check_splash(&p, t, &cfg, what);
        free(bits);
        tc_free(&p);
        tm_free_all();
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_band_kinds),
        cmocka_unit_test(test_dense_kinds),
        cmocka_unit_test(test_combinations),
        cmocka_unit_test(test_options_and_mask),
        cmocka_unit_test(test_logit_options),
        cmocka_unit_test(test_offsets),
        cmocka_unit_test(test_gqa_mqa),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_empty_batch_huge_lengths),
        cmocka_unit_test(test_fully_masked_rows),
        cmocka_unit_test(test_equals_flash),
        cmocka_unit_test(test_mask_from_options),
        cmocka_unit_test(test_empty_blocks_not_read),
        cmocka_unit_test(test_info_reuse),
        cmocka_unit_test(test_sdpa_choice),
        cmocka_unit_test(test_front_door_errors),
        cmocka_unit_test(test_random),
    };
    int failed = tl_run_spread("splash", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
