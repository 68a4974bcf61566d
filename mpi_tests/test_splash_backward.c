/* Splash attention backward against the float64 reference gradient of
 * common/refgrad.c (validated by finite differences in test_backward_fd.c),
 * with its per-element fp32 error bounds: every mask kind and combination
 * (the reference sees a mask object as the equivalent dense boolean mask,
 * built from the naive predicate of test_splash_masks.h), masks from the
 * options (mask NULL), segments, every logit option with dsinks and dbias,
 * dropout, GQA / MQA (per-head lists, sliced rows), lengths and block sizes
 * that do not divide, q length 1, fully masked rows, EMPTY blocks never
 * read, kv-range splitting over threads, multi-panel rows, sdpa choosing
 * splash, gradients after the library's own forward, and argument errors.
 * Tests are spread over the ranks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cases.h"
#include "common/refgrad.h"
#include "test_splash_masks.h"

/* ------------------------------------------------------------------ harness */

typedef struct bcfg {
    int bq, bkv;   /* 0 = defaults */
    char layout;   /* 't' BTHD, 'h' BHTD, 'p' padded strides */
    int threads;
    int mode;      /* 0: mattn_splash_backward(mask), 1: _info, 2: mask NULL */
} bcfg;

/* The gradients one splash backward call returned, in BTHD. */
typedef struct grads {
    float *dq, *dk, *dv, *dsinks, *dbias;
} grads;

static void grads_free(grads *g)
{
    free(g->dq), free(g->dk), free(g->dv), free(g->dsinks), free(g->dbias);
    memset(g, 0, sizeof *g);
}

/* Runs splash backward on `call` (its own options) with mask object t, o
 * and lse given (BTHD / [B, Hq, T]); fills *out. Returns the status. */
static int run_bwd(const tc_problem *call, const tm *t, const bcfg *cfg, const float *o_bthd,
                   const float *lse, const float *dout, grads *out)
{
    const int64_t B = call->B, T = call->T, S = call->S, Hq = call->Hq, Hkv = call->Hkv,
                  D = call->D, Dv = call->Dv;
    const char l = cfg->layout;
    /* NaN-filled: an element never written fails. */
    float *bq = tl_nan_floats(tl_view_floats(l, B, T, Hq, D)),
          *bk = tl_nan_floats(tl_view_floats(l, B, S, Hkv, D)),
          *bv = tl_nan_floats(tl_view_floats(l, B, S, Hkv, Dv)),
          *bo = tl_nan_floats(tl_view_floats(l, B, T, Hq, Dv)),
          *bdo = tl_nan_floats(tl_view_floats(l, B, T, Hq, Dv)),
          *bdq = tl_nan_floats(tl_view_floats(l, B, T, Hq, D)),
          *bdk = tl_nan_floats(tl_view_floats(l, B, S, Hkv, D)),
          *bdv = tl_nan_floats(tl_view_floats(l, B, S, Hkv, Dv));
    mattn_tensor q = tl_view(bq, l, B, T, Hq, D), k = tl_view(bk, l, B, S, Hkv, D),
                 v = tl_view(bv, l, B, S, Hkv, Dv), o = tl_view(bo, l, B, T, Hq, Dv),
                 dot = tl_view(bdo, l, B, T, Hq, Dv), dq = tl_view(bdq, l, B, T, Hq, D),
                 dk = tl_view(bdk, l, B, S, Hkv, D), dv = tl_view(bdv, l, B, S, Hkv, Dv);
    tl_scatter(call->q, &q), tl_scatter(call->k, &k), tl_scatter(call->v, &v);
    tl_scatter(o_bthd, &o), tl_scatter(dout, &dot);
    memset(out, 0, sizeof *out);
    size_t nb = (size_t)(call->bias_b * call->bias_h * T * S);
    if (call->sinks) {
        out->dsinks = tl_alloc(sizeof(float) * (size_t)(Hq + 1));
        for (int64_t h = 0; h < Hq; h++)
            out->dsinks[h] = NAN;
    }
    if (call->bias) {
        out->dbias = tl_alloc(sizeof(float) * (nb + 1));
        for (size_t x = 0; x < nb; x++)
            out->dbias[x] = NAN;
    }
    mattn_options opts = tc_options(call);
    opts.threads = cfg->threads;
    mattn_splash_mask *m = cfg->mode == 2 ? NULL : tm_build(t);
    int rc;
    if (cfg->mode == 1) {
        mattn_splash_info_options io = mattn_splash_info_options_default();
        io.q_offset = call->q_offset, io.kv_offset = call->kv_offset;
        io.block_q = cfg->bq, io.block_kv = cfg->bkv;
        mattn_splash_info *info = NULL;
        rc = mattn_splash_info_create(m, T, S, &io, &info);
        if (rc == MATTN_OK)
            rc = mattn_splash_backward_info(&q, &k, &v, &o, lse, &dot, &dq, &dk, &dv,
                                            out->dsinks, out->dbias, info, &opts);
        mattn_splash_info_free(info);
    } else {
        opts.block_q = cfg->bq, opts.block_kv = cfg->bkv;
        rc = mattn_splash_backward(&q, &k, &v, &o, lse, &dot, &dq, &dk, &dv, out->dsinks,
                                   out->dbias, m, &opts);
    }
    mattn_splash_mask_free(m);
    out->dq = tl_alloc(sizeof(float) * (size_t)(B * T * Hq * D + 1));
    out->dk = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * D + 1));
    out->dv = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * Dv + 1));
    if (rc == MATTN_OK)
        tl_gather(out->dq, &dq), tl_gather(out->dk, &dk), tl_gather(out->dv, &dv);
    free(bq), free(bk), free(bv), free(bo), free(bdo), free(bdq), free(bdk), free(bdv);
    return rc;
}

static void check_grads(const char *what, const tc_problem *p, const grads *g,
                        const rg_grads *ref)
{
    rg_check(what, "dq", g->dq, ref->dq, ref->tol_dq, p->B * p->T * p->Hq * p->D);
    rg_check(what, "dk", g->dk, ref->dk, ref->tol_dk, p->B * p->S * p->Hkv * p->D);
    rg_check(what, "dv", g->dv, ref->dv, ref->tol_dv, p->B * p->S * p->Hkv * p->Dv);
    if (g->dsinks)
        rg_check(what, "dsinks", g->dsinks, ref->dsinks, ref->tol_dsinks, p->Hq);
    if (g->dbias)
        rg_check(what, "dbias", g->dbias, ref->dbias, ref->tol_dbias,
                 p->bias_b * p->bias_h * p->T * p->S);
}

/* The float64 reference of `call` with mask object t folded in. */
typedef struct refcase {
    tc_problem ref;
    rg_inputs in;
    rg_grads g;
    float *o, *lse, *dout; /* o and lse: the reference's, rounded to fp32 */
} refcase;

static refcase refcase_make(const tc_problem *call, const tm *t, uint64_t seed)
{
    refcase rc;
    rc.ref = tm_reference_of(call, t);
    tl_rng r = tl_rng_make(seed);
    rc.dout = rg_random_dout(&r, call);
    rc.in = rg_inputs_make(&rc.ref, rc.dout);
    rc.g = rg_backward(&rc.ref, &rc.in, NULL);
    rg_round_forward(call, &rc.g, &rc.o, &rc.lse);
    return rc;
}

static void refcase_free(refcase *rc)
{
    rg_grads_free(&rc->g);
    rg_inputs_free(&rc->in);
    free(rc->ref.mask), free(rc->o), free(rc->lse), free(rc->dout);
}

static void check_cfg(const tc_problem *call, const tm *t, const refcase *rc, const bcfg *cfg,
                      const char *what)
{
    grads g;
    int st = run_bwd(call, t, cfg, rc->o, rc->lse, rc->dout, &g);
    if (st != MATTN_OK)
        fail_msg("%s: splash backward failed: %s", what, mattn_last_error());
    char label[200];
    snprintf(label, sizeof label, "%s (blocks %dx%d, layout %c, threads %d, mode %d)", what,
             cfg->bq, cfg->bkv, cfg->layout, cfg->threads, cfg->mode);
    check_grads(label, call, &g, &rc->g);
    grads_free(&g);
}

/* Splash backward over `call` with mask object t, in a few configurations:
 * default and odd block sizes, every layout, 1-3 threads, info reuse. */
static void check_bwd(const tc_problem *call, const tm *t, const char *what)
{
    static const bcfg cfgs[] = {
        {0, 0, 't', 1, 0}, {16, 16, 'h', 1, 1}, {13, 29, 'p', 3, 1}, {8, 64, 't', 2, 0},
    };
    refcase rc = refcase_make(call, t, 7 + (uint64_t)call->T);
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
        check_cfg(call, t, &rc, &cfgs[i], what);
    refcase_free(&rc);
}

/* ------------------------------------------------------------------ mask kinds */

static void test_band_kinds(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(1, 2, 45, 58, 4, 2, 16, 12);
    check_bwd(&p, tm_full(), "full");
    check_bwd(&p, tm_causal(0), "causal");
    check_bwd(&p, tm_causal(6), "causal +6");
    check_bwd(&p, tm_causal(-3), "causal -3 (first rows empty)");
    check_bwd(&p, tm_local(9, 0), "local (9, 0)");
    check_bwd(&p, tm_local(4, 11), "local (4, 11)");
    check_bwd(&p, tm_chunked(8), "chunked 8");
    check_bwd(&p, tm_chunked(13), "chunked 13");
    tc_free(&p);
    tm_free_all();
}

static void test_dense_and_per_head(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(2);
    tc_problem p = tc_seeded(2, 2, 41, 50, 3, 3, 8, 16);
    uint8_t *bits = tm_random_bits(&r, 41 * 50, 0.6);
    check_bwd(&p, tm_dense(bits, 41, 50, 0, 0), "dense random");
    uint8_t *cells = tc_block_sparse_bits(41, 50);
    check_bwd(&p, tm_dense(cells, 41, 50, 0, 0), "dense block-sparse");
    check_bwd(&p, tm_dense(bits, 30, 30, 6, 12), "dense placed off-origin");
    tm *heads[3] = {tm_causal(0), tm_dense(bits, 41, 50, 0, 0), tm_local(3, 3)};
    check_bwd(&p, tm_per_head(heads, 3), "per-head");
    free(bits), free(cells);
    tc_free(&p);
    tm_free_all();
}

static void test_combinations(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(3);
    tc_problem p = tc_seeded(3, 1, 48, 48, 4, 1, 16, 16);
    uint8_t *bits = tm_random_bits(&r, 48 * 48, 0.5);
    tm *dense = tm_dense(bits, 48, 48, 0, 0);
    check_bwd(&p, tm_pair(TM_AND, tm_causal(0), tm_local(10, 0)), "causal & local");
    check_bwd(&p, tm_pair(TM_OR, tm_local(3, 3), tm_chunked(16)), "local | chunked");
    check_bwd(&p, tm_pair(TM_OR, tm_causal(-20), dense), "causal(-20) | dense");
    check_bwd(&p, tm_pair(TM_AND, dense, tm_chunked(12)), "dense & chunked");
    check_bwd(&p, tm_pair(TM_OR, tm_pair(TM_AND, tm_causal(0), tm_local(5, 0)), tm_local(0, 2)),
              "nested");
    tm *heads[4] = {tm_causal(0), tm_full(), tm_chunked(9), tm_pair(TM_OR, tm_local(1, 1), dense)};
    check_bwd(&p, tm_pair(TM_AND, tm_per_head(heads, 4), tm_local(20, 20)),
              "per-head & local (MQA)");
    free(bits);
    tc_free(&p);
    tm_free_all();
}

/* The options' predicates AND the mask object; segment ids with each kind. */
static void test_options_segments(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(4);
    tc_problem p = tc_make(&r, 2, 50, 50, 4, 2, 16, 16, 1.0);
    p.causal = 1;
    check_bwd(&p, tm_local(-1, 8), "opts causal & local(-1, 8)");
    p.causal = 0, p.window_left = 12, p.window_right = 3;
    check_bwd(&p, tm_chunked(16), "opts window & chunked");
    p.window_left = p.window_right = -1;
    p.mask_b = 2, p.mask_h = 1; /* a per-batch option mask stays element-wise */
    p.mask = tm_random_bits(&r, 2 * 50 * 50, 0.7);
    check_bwd(&p, tm_causal(0), "opts per-batch mask & causal");
    free(p.mask);
    p.mask = NULL;
    tc_add_segments(&p);
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 50; i++)
            p.q_seg[b * 50 + i] = p.kv_seg[b * 50 + i] = i < 45 ? (i + 7 * b) / 13 : -1;
    uint8_t *bits = tm_random_bits(&r, 50 * 50, 0.6);
    tm *kinds[] = {tm_causal(0), tm_local(5, 5), tm_chunked(10), tm_dense(bits, 50, 50, 0, 0)};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        check_bwd(&p, kinds[i], "segments & mask");
    free(bits);
    tc_free(&p);
    tm_free_all();
}

/* Sinks (dsinks), soft cap, scale, bias (dbias in every broadcast shape),
 * dropout with the forward's u. */
static void test_logit_options(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(5);
    tc_problem p = tc_make(&r, 2, 39, 44, 4, 2, 24, 16, 2.0);
    p.sinks = tl_alloc(sizeof(float) * 4);
    p.sinks[0] = 0.5f, p.sinks[1] = -2.0f, p.sinks[2] = 3.0f, p.sinks[3] = -INFINITY;
    check_bwd(&p, tm_causal(-4), "sinks (rows with only the sink)");
    p.softcap = 4.0;
    check_bwd(&p, tm_local(6, 6), "sinks + softcap");
    p.scale = 0.3;
    static const int64_t dims[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (int c = 0; c < 4; c++) {
        tc_random_bias(&r, &p, dims[c][0], dims[c][1], 2.0);
        check_bwd(&p, tm_chunked(12), "scale + bias");
        free(p.bias);
        p.bias = NULL;
    }
    tc_random_bias(&r, &p, 1, 4, 1.0);
    p.dropout_p = 0.35f, p.seed = 99, p.drop_b0 = 1, p.drop_h0 = 4;
    check_bwd(&p, tm_pair(TM_OR, tm_causal(0), tm_local(0, 3)), "dropout and everything");
    p.q_offset = 30, p.kv_offset = 25;
    check_bwd(&p, tm_chunked(16), "dropout, offsets");
    tc_free(&p);
    tm_free_all();
}

/* ------------------------------------------------------------------ heads, lengths */

static void test_gqa_mqa(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(7, 1, 70, 66, 6, 2, 16, 24); /* GQA, Dv != D */
    check_bwd(&p, tm_causal(0), "GQA causal");
    tc_free(&p);
    /* MQA with 16 q heads: 256 / 16 = 16 positions per GEMM sub-block, so a
     * 64-row q block is cut in four. */
    p = tc_seeded(8, 1, 80, 90, 16, 1, 8, 8);
    refcase rc = refcase_make(&p, tm_local(20, 5), 8);
    bcfg big = {64, 32, 't', 2, 1};
    check_cfg(&p, tm_local(20, 5), &rc, &big, "MQA sub-blocks");
    refcase_free(&rc);
    tm *heads[16];
    for (int h = 0; h < 16; h++)
        heads[h] = h % 2 ? tm_causal(-h) : tm_local(h, h);
    tm *ph = tm_per_head(heads, 16);
    rc = refcase_make(&p, ph, 9);
    check_cfg(&p, ph, &rc, &big, "MQA per-head sub-blocks");
    refcase_free(&rc);
    check_bwd(&p, ph, "MQA per-head");
    tc_free(&p);
    tm_free_all();
}

static void test_lengths(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 77}, {77, 1}, {70, 131}, {5, 0}, {0, 7}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        tc_problem p = tc_seeded(20 + i, 2, shapes[i][0], shapes[i][1], 4, 2, 8, 8);
        p.q_offset = p.S - p.T; /* bottom-right: the T = 1 row is a decode step */
        check_bwd(&p, tm_causal(0), "lengths causal");
        check_bwd(&p, tm_local(7, 0), "lengths local");
        tc_free(&p);
    }
    tc_problem p = tc_seeded(30, 0, 5, 5, 2, 2, 8, 8); /* B = 0 */
    check_bwd(&p, tm_causal(0), "B = 0");
    tc_free(&p);
    tm_free_all();
}

/* A larger problem at the default 256 x 256 blocks (several q and kv
 * blocks, PARTIAL and FULL ones), 1 and 2 threads. */
static void test_default_blocks(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(35, 1, 600, 640, 4, 2, 32, 32);
    static const bcfg cfgs[] = {{0, 0, 't', 1, 0}, {0, 0, 'h', 2, 2}};
    p.causal = 1; /* mode 2 derives the same causal mask from the options */
    tm *t = tm_causal(0);
    refcase rc = refcase_make(&p, t, 35);
    for (size_t i = 0; i < 2; i++)
        check_cfg(&p, t, &rc, &cfgs[i], "default blocks, causal");
    refcase_free(&rc);
    p.causal = 0;
    t = tm_local(300, 0);
    rc = refcase_make(&p, t, 36);
    check_cfg(&p, t, &rc, &cfgs[0], "default blocks, local (300, 0)");
    refcase_free(&rc);
    tc_free(&p);
    tm_free_all();
}

/* Fully masked rows (with and without a sink): exactly zero gradients. */
static void test_fully_masked_rows(void **state)
{
    (void)state;
    for (int sinks = 0; sinks < 2; sinks++) {
        tc_problem p = tc_seeded(40, 1, 20, 20, 2, 2, 8, 8);
        if (sinks) {
            p.sinks = tl_alloc(sizeof(float) * 2);
            p.sinks[0] = 1.5f, p.sinks[1] = -0.25f;
        }
        tm *t = tm_causal(-6); /* rows 0-5 see nothing; keys 14.. are seen by nobody */
        refcase rc = refcase_make(&p, t, 40);
        bcfg cfg = {4, 4, 't', 1, 0};
        grads g;
        assert_int_equal(run_bwd(&p, t, &cfg, rc.o, rc.lse, rc.dout, &g), MATTN_OK);
        for (int i = 0; i < 6 * 2 * 8; i++)
            assert_true(g.dq[i] == 0.0f);
        for (int j = 14; j < 20; j++)
            for (int x = 0; x < 2 * 8; x++)
                assert_true(g.dk[j * 16 + x] == 0.0f && g.dv[j * 16 + x] == 0.0f);
        check_grads("fully masked rows", &p, &g, &rc.g);
        grads_free(&g);
        refcase_free(&rc);
        tc_free(&p);
    }
    tm_free_all();
}

/* mask NULL: the mask comes from the options. */
static void test_mask_from_options(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(55);
    tc_problem p = tc_make(&r, 2, 50, 61, 4, 2, 16, 16, 1.0);
    static const bcfg cfgs[] = {{0, 0, 't', 1, 2}, {16, 32, 'h', 2, 2}, {13, 7, 'p', 1, 2}};
    tm *full = tm_full();
    for (int c = 0; c < 7; c++) {
        p.causal = c == 0 || c == 2 || c == 4 || c == 6;
        p.window_left = c == 1 ? 9 : -1, p.window_right = c == 1 ? 4 : -1;
        p.chunk = c == 2 ? 16 : 0;
        p.q_offset = c == 4 ? 11 : 0;
        if (c == 3 || c == 4 || c == 6) { /* shared by the batch; c = 6: per batch entry */
            p.mask_b = c == 6 ? 2 : 1, p.mask_h = c == 3 ? 4 : 1;
            p.mask = tm_random_bits(&r, p.mask_b * p.mask_h * 50 * 61, 0.5);
        }
        char what[64];
        snprintf(what, sizeof what, "mask from the options, case %d", c);
        refcase rc = refcase_make(&p, full, 55 + (uint64_t)c);
        for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
            check_cfg(&p, full, &rc, &cfgs[i], what);
        refcase_free(&rc);
        free(p.mask);
        p.mask = NULL;
    }
    tc_free(&p);
    tm_free_all();
}

/* ------------------------------------------------------------------ skipping */

/* EMPTY blocks are never read: K and V rows covered only by EMPTY blocks
 * hold NaN, which any GEMM over them would spread into dq (and their own
 * dk/dv rows must come out exactly 0). */
static void test_empty_blocks_not_read(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(60, 1, 48, 80, 2, 1, 8, 8);
    /* Keys 32..63 are masked for every query: with 16-key blocks, kv blocks
     * 2 and 3 are EMPTY everywhere. */
    uint8_t *bits = tl_alloc(48 * 80);
    for (int i = 0; i < 48; i++)
        for (int j = 0; j < 80; j++)
            bits[i * 80 + j] = (uint8_t)((j < 32 || j >= 64) && (i + j) % 5);
    tm *t = tm_dense(bits, 48, 80, 0, 0);
    refcase rc = refcase_make(&p, t, 60);
    tc_nan_keys(&p, 32, 64);
    bcfg cfgs[] = {{16, 16, 't', 1, 1}, {16, 16, 'h', 2, 0}};
    for (int c = 0; c < 2; c++) {
        grads g;
        assert_int_equal(run_bwd(&p, t, &cfgs[c], rc.o, rc.lse, rc.dout, &g), MATTN_OK);
        check_grads("NaN keys in EMPTY blocks", &p, &g, &rc.g);
        for (int j = 32; j < 64; j++)
            for (int d = 0; d < 8; d++)
                assert_true(g.dk[j * 8 + d] == 0.0f && g.dv[j * 8 + d] == 0.0f);
        grads_free(&g);
    }
    refcase_free(&rc);
    tc_free(&p);
    /* Top-left causal with T < S, 3 threads (kv ranges split): keys from T
     * on are in EMPTY blocks only. */
    p = tc_seeded(61, 1, 40, 80, 2, 2, 8, 8);
    t = tm_causal(0);
    rc = refcase_make(&p, t, 61);
    tc_nan_keys(&p, 48, 80);
    bcfg cfg = {16, 16, 't', 3, 0};
    grads g;
    assert_int_equal(run_bwd(&p, t, &cfg, rc.o, rc.lse, rc.dout, &g), MATTN_OK);
    check_grads("NaN keys past a top-left causal edge", &p, &g, &rc.g);
    grads_free(&g);
    refcase_free(&rc);
    free(bits);
    tc_free(&p);
    tm_free_all();
}

/* kv ranges split over threads (private dQ partials), and the multi-panel
 * path (MATTN_FLASH_BWD_PANEL shrinks the row panel), with a bias broadcast
 * over the batch (private dbias copies). */
static void test_threads_and_panels(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(70);
    tc_problem p = tc_make(&r, 2, 90, 100, 2, 1, 16, 16, 1.0);
    tc_random_bias(&r, &p, 1, 2, 1.0);
    tm *t = tm_pair(TM_OR, tm_causal(0), tm_local(0, 20));
    refcase rc = refcase_make(&p, t, 70);
    static const bcfg cfgs[] = {{16, 8, 't', 4, 1}, {7, 16, 'h', 3, 0}, {32, 32, 't', 2, 1}};
    for (int panel = 0; panel < 2; panel++) {
        if (panel)
            setenv("MATTN_FLASH_BWD_PANEL", "32", 1);
        for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
            check_cfg(&p, t, &rc, &cfgs[i], panel ? "threads, small panels" : "threads");
    }
    unsetenv("MATTN_FLASH_BWD_PANEL");
    refcase_free(&rc);
    tc_free(&p);
    tm_free_all();
}

/* ------------------------------------------------------------------ sdpa, forward */

/* sdpa backward runs splash exactly when sdpa forward does. */
static void test_sdpa_choice(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(80, 1, 512, 512, 2, 1, 16, 16);
    float *o = tl_alloc(sizeof(float) * 512 * 2 * 16), *lse = tl_alloc(sizeof(float) * 2 * 512);
    float *dout = tl_alloc(sizeof(float) * 512 * 2 * 16), *dq = tl_alloc(sizeof(float) * 512 * 2 * 16);
    float *dk = tl_alloc(sizeof(float) * 512 * 16), *dv = tl_alloc(sizeof(float) * 512 * 16);
    mattn_tensor q = mattn_tensor_bthd(p.q, 1, 512, 2, 16), k = mattn_tensor_bthd(p.k, 1, 512, 1, 16),
                 v = mattn_tensor_bthd(p.v, 1, 512, 1, 16), to = mattn_tensor_bthd(o, 1, 512, 2, 16),
                 tdo = mattn_tensor_bthd(dout, 1, 512, 2, 16), tdq = mattn_tensor_bthd(dq, 1, 512, 2, 16),
                 tdk = mattn_tensor_bthd(dk, 1, 512, 1, 16), tdv = mattn_tensor_bthd(dv, 1, 512, 1, 16);
    mattn_options opts = mattn_options_default();
    for (int c = 0; c < 2; c++) {
        opts.causal = c == 0;      /* 10 of 16 blocks: splash */
        opts.window_left = c == 1 ? 1000 : -1; /* covers everything: flash */
        mattn_kernel fwd = (mattn_kernel)-1, bwd = (mattn_kernel)-2;
        assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, lse, &opts, &fwd), MATTN_OK);
        assert_int_equal(mattn_sdpa_backward(&q, &k, &v, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL,
                                             NULL, &opts, &bwd),
                         MATTN_OK);
        assert_int_equal(fwd, c == 0 ? MATTN_KERNEL_SPLASH : MATTN_KERNEL_FLASH);
        assert_int_equal(bwd, fwd);
    }
    free(o), free(lse), free(dout), free(dq), free(dk), free(dv);
    tc_free(&p);
    /* And the gradients through sdpa's splash path: structural options with
     * offsets, a per-head boolean mask, segments. */
    p = tc_seeded(82, 2, 160, 170, 4, 2, 16, 16);
    p.causal = 1, p.q_offset = 15, p.kv_offset = 3;
    tc_striped_mask_segments(&p);
    tl_rng r = tl_rng_make(83);
    float *d = rg_random_dout(&r, &p);
    assert_int_equal(rg_run_and_check("sdpa", &p, d, 'h', 2, 32, 32), MATTN_OK);
    free(d);
    tc_free(&p);
}

/* Gradients after the library's own splash forward: its o and lse carry
 * the forward's error bounds, which the reference adds as input errors. */
static void test_after_forward(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(90);
    tc_problem p = tc_make(&r, 2, 64, 64, 4, 2, 16, 16, 1.0);
    tc_random_sinks(&r, &p, 1.0);
    p.softcap = 5.0;
    tm *t = tm_pair(TM_AND, tm_causal(0), tm_local(24, 0));
    tc_problem ref = tm_reference_of(&p, t);
    const int64_t no = 2 * 64 * 4 * 16, nl = 2 * 4 * 64;
    double *tol_o = tl_alloc(sizeof(double) * 2 * 64 * 4), *tol_l = tl_alloc(sizeof(double) * nl);
    tc_reference(&ref, NULL, NULL, NULL, tol_o, tol_l, NULL);
    float *dout = rg_random_dout(&r, &p);
    rg_inputs in = rg_inputs_make(&ref, dout);
    rg_input_err err = {tol_o, tol_l};
    rg_grads want = rg_backward(&ref, &in, &err);

    float *o = tl_alloc(sizeof(float) * no), *lse = tl_alloc(sizeof(float) * nl);
    mattn_tensor q = mattn_tensor_bthd(p.q, 2, 64, 4, 16), k = mattn_tensor_bthd(p.k, 2, 64, 2, 16),
                 v = mattn_tensor_bthd(p.v, 2, 64, 2, 16), to = mattn_tensor_bthd(o, 2, 64, 4, 16);
    mattn_splash_mask *m = tm_build(t);
    mattn_options opts = tc_options(&p);
    opts.block_q = 16, opts.block_kv = 16;
    assert_int_equal(mattn_splash_forward(&q, &k, &v, &to, lse, m, &opts), MATTN_OK);
    mattn_splash_mask_free(m);
    bcfg cfg = {16, 16, 't', 2, 0};
    grads g;
    assert_int_equal(run_bwd(&p, t, &cfg, o, lse, dout, &g), MATTN_OK);
    check_grads("after splash forward", &p, &g, &want);
    grads_free(&g);
    rg_grads_free(&want);
    rg_inputs_free(&in);
    free(ref.mask), free(tol_o), free(tol_l), free(dout), free(o), free(lse);
    tc_free(&p);
    tm_free_all();
}

/* ------------------------------------------------------------------ errors */

static void test_errors(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(95, 1, 32, 48, 4, 2, 8, 8);
    float o[32 * 4 * 8] = {0}, lse[4 * 32] = {0}, dout[32 * 4 * 8] = {0}, dq[32 * 4 * 8];
    float dk[48 * 2 * 8], dv[48 * 2 * 8], ds[4];
    mattn_tensor q = mattn_tensor_bthd(p.q, 1, 32, 4, 8), k = mattn_tensor_bthd(p.k, 1, 48, 2, 8),
                 v = mattn_tensor_bthd(p.v, 1, 48, 2, 8), to = mattn_tensor_bthd(o, 1, 32, 4, 8),
                 tdo = mattn_tensor_bthd(dout, 1, 32, 4, 8), tdq = mattn_tensor_bthd(dq, 1, 32, 4, 8),
                 tdk = mattn_tensor_bthd(dk, 1, 48, 2, 8), tdv = mattn_tensor_bthd(dv, 1, 48, 2, 8);
    mattn_options opts = mattn_options_default();
    mattn_splash_mask *m, *ph;
    assert_int_equal(mattn_splash_mask_causal(0, &m), MATTN_OK);
    mattn_splash_mask *three[3] = {m, m, m};
    assert_int_equal(mattn_splash_mask_per_head(three, 3, &ph), MATTN_OK);
    assert_int_equal(mattn_splash_backward(&q, &k, &v, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL,
                                           NULL, m, &opts),
                     MATTN_OK);
    tl_expect_error(mattn_splash_backward(&q, &k, &v, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, NULL,
                                          ph, &opts),
                    MATTN_ERR_SHAPE, "3-head mask, 4 q heads");
    tl_expect_error(mattn_splash_backward(&q, &k, &v, &to, NULL, &tdo, &tdq, &tdk, &tdv, NULL, NULL,
                                          m, &opts),
                    MATTN_ERR_ARG, "lse NULL");
    tl_expect_error(mattn_splash_backward(&q, &k, &v, &to, lse, &tdo, &tdq, &tdk, &tdv, ds, NULL, m,
                                          &opts),
                    MATTN_ERR_ARG, "dsinks without sinks");
    tl_expect_error(mattn_splash_backward_info(&q, &k, &v, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL,
                                               NULL, NULL, &opts),
                    MATTN_ERR_ARG, "NULL info");
    mattn_splash_info_options io = mattn_splash_info_options_default();
    mattn_splash_info *info;
    assert_int_equal(mattn_splash_info_create(m, 32, 40, &io, &info), MATTN_OK);
    tl_expect_error(mattn_splash_backward_info(&q, &k, &v, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL,
                                               NULL, info, &opts),
                    MATTN_ERR_SHAPE, "info for another S");
    mattn_splash_info_free(info);
    io.q_offset = 16;
    assert_int_equal(mattn_splash_info_create(m, 32, 48, &io, &info), MATTN_OK);
    tl_expect_error(mattn_splash_backward_info(&q, &k, &v, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL,
                                               NULL, info, &opts),
                    MATTN_ERR_ARG, "info for another q_offset");
    mattn_splash_info_free(info);
    tdk.heads = 1;
    tl_expect_error(mattn_splash_backward(&q, &k, &v, &to, lse, &tdo, &tdq, &tdk, &tdv, NULL, NULL,
                                          m, &opts),
                    MATTN_ERR_SHAPE, "dk shape");
    mattn_splash_mask_free(m);
    mattn_splash_mask_free(ph);
    tc_free(&p);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_band_kinds),
        cmocka_unit_test(test_dense_and_per_head),
        cmocka_unit_test(test_combinations),
        cmocka_unit_test(test_options_segments),
        cmocka_unit_test(test_logit_options),
        cmocka_unit_test(test_gqa_mqa),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_default_blocks),
        cmocka_unit_test(test_fully_masked_rows),
        cmocka_unit_test(test_mask_from_options),
        cmocka_unit_test(test_empty_blocks_not_read),
        cmocka_unit_test(test_threads_and_panels),
        cmocka_unit_test(test_sdpa_choice),
        cmocka_unit_test(test_after_forward),
        cmocka_unit_test(test_errors),
    };
    int failed = tl_run_spread("splash_backward", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
