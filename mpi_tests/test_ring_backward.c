/* Distributed backward (SPEC §5, §7): ring backward and the mesh backward
 * front door against the float64 reference gradient (common/refgrad.h), on
 * every mesh shape the job's size allows, both sequence layouts, uneven
 * lengths, GQA/MQA and every option. Every rank builds the same global
 * problem, cuts its own shard with the test's own reading of the layouts
 * (not the library's), runs the call and checks its dq, dk, dv rows and the
 * whole dsinks / dbias against the reference. Each problem is also run
 * through single-rank flash backward against the same reference, so ring ==
 * flash == reference. The bad-input test checks that one rank's bad
 * argument comes back from every rank, under a timeout. Collective: every
 * test runs on every rank. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cases.h"
#include "common/refgrad.h"
#include "common/shards.h"

/* ------------------------------------------------------------------ runs */

typedef struct bref {
    rg_grads g;
    float *o, *lse, *dout; /* fp32: the reference o / lse rounded, and dout */
} bref;

/* The reference gradient, and single-rank flash backward checked against
 * it (the "== flash" leg). */
static bref bref_make(const tc_problem *p, uint64_t seed)
{
    tl_rng r = tl_rng_make(seed);
    bref x;
    x.dout = rg_random_dout(&r, p);
    rg_inputs in = rg_inputs_make(p, x.dout);
    x.g = rg_backward(p, &in, NULL);
    rg_inputs_free(&in);
    rg_round_forward(p, &x.g, &x.o, &x.lse);
    assert_int_equal(rg_run_and_check("flash", p, x.dout, 't', 1, 0, 0), MATTN_OK);
    return x;
}

static void bref_free(bref *x)
{
    rg_grads_free(&x->g);
    free(x->o), free(x->lse), free(x->dout);
}

static float *nans(size_t n)
{
    float *x = tl_alloc(sizeof(float) * (n + 1));
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
    return x;
}

/* Checks a local gradient view against the reference rows it holds. */
static void check_rows(const char *what, const char *name, const mattn_tensor *t,
                       const double *want, const double *tol, int64_t L, int64_t H, int64_t Dm,
                       int64_t b0, const int64_t *rows, int64_t h0)
{
    size_t n = (size_t)(t->batch * t->seq * t->heads * Dm);
    float *got = tl_alloc(sizeof(float) * (n + 1));
    double *w = tl_alloc(sizeof(double) * (n + 1)), *e = tl_alloc(sizeof(double) * (n + 1));
    size_t i = 0;
    for (int64_t b = 0; b < t->batch; b++)
        for (int64_t l = 0; l < t->seq; l++)
            for (int64_t h = 0; h < t->heads; h++)
                for (int64_t d = 0; d < Dm; d++, i++) {
                    int64_t gi = (((b0 + b) * L + rows[l]) * H + h0 + h) * Dm + d;
                    got[i] = sh_at(t, b, l, h)[d];
                    w[i] = want[gi];
                    e[i] = tol[gi];
                }
    rg_check(what, name, got, w, e, (int64_t)n);
    free(got), free(w), free(e);
}

typedef struct cfg {
    mattn_op op;
    mattn_seq_layout layout;
    mattn_ring_comm comm;
    char tensors; /* 't' BTHD, 'h' BHTD */
    int threads;
    int ex;       /* ring: call mattn_ring_backward_ex, not the mesh door */
} cfg;

/* One distributed backward on this rank's shard, checked. Returns the status. */
static int run_one(const tc_problem *p, const bref *x, const mattn_mesh *m, const cfg *c,
                   mattn_ring_stats *stats)
{
    sh_shard s = sh_shard_of(p, m, c->layout);
    mattn_dist_shape shape = {p->B, p->T, p->S, p->Hq, p->Hkv, c->layout};
    const int64_t D = p->D, Dv = p->Dv;
    float *buf[9];
    buf[0] = nans((size_t)(s.nb * s.T * s.nhq * D));  /* q */
    buf[1] = nans((size_t)(s.nb * s.S * s.nhk * D));  /* k */
    buf[2] = nans((size_t)(s.nb * s.S * s.nhk * Dv)); /* v */
    buf[3] = nans((size_t)(s.nb * s.T * s.nhq * Dv)); /* o */
    buf[4] = nans((size_t)(s.nb * s.T * s.nhq * Dv)); /* dout */
    buf[5] = nans((size_t)(s.nb * s.T * s.nhq * D));  /* dq */
    buf[6] = nans((size_t)(s.nb * s.S * s.nhk * D));  /* dk */
    buf[7] = nans((size_t)(s.nb * s.S * s.nhk * Dv)); /* dv */
    buf[8] = nans((size_t)(s.nb * s.nhq * s.T));      /* lse */
    char L = c->tensors;
    mattn_tensor q = tl_view(buf[0], L, s.nb, s.T, s.nhq, D);
    mattn_tensor k = tl_view(buf[1], L, s.nb, s.S, s.nhk, D);
    mattn_tensor v = tl_view(buf[2], L, s.nb, s.S, s.nhk, Dv);
    mattn_tensor o = tl_view(buf[3], L, s.nb, s.T, s.nhq, Dv);
    mattn_tensor dout = tl_view(buf[4], L, s.nb, s.T, s.nhq, Dv);
    mattn_tensor dq = tl_view(buf[5], L, s.nb, s.T, s.nhq, D);
    mattn_tensor dk = tl_view(buf[6], L, s.nb, s.S, s.nhk, D);
    mattn_tensor dv = tl_view(buf[7], L, s.nb, s.S, s.nhk, Dv);
    sh_take(p->q, p->T, p->Hq, D, &q, s.b0, s.trow, s.hq0);
    sh_take(p->k, p->S, p->Hkv, D, &k, s.b0, s.srow, s.hk0);
    sh_take(p->v, p->S, p->Hkv, Dv, &v, s.b0, s.srow, s.hk0);
    sh_take(x->o, p->T, p->Hq, Dv, &o, s.b0, s.trow, s.hq0);
    sh_take(x->dout, p->T, p->Hq, Dv, &dout, s.b0, s.trow, s.hq0);
    float *lse = buf[8];
    for (int64_t b = 0; b < s.nb; b++)
        for (int64_t h = 0; h < s.nhq; h++)
            for (int64_t t = 0; t < s.T; t++)
                lse[(b * s.nhq + h) * s.T + t] =
                    x->lse[((s.b0 + b) * p->Hq + s.hq0 + h) * p->T + s.trow[t]];
    mattn_options opts = tc_options(p);
    opts.threads = c->threads;
    int32_t *qs, *ks;
    sh_take_segments(p, &s, &opts, &qs, &ks);
    size_t nbias = (size_t)(p->bias_b * p->bias_h * p->T * p->S);
    float *dsinks = p->sinks ? nans((size_t)p->Hq) : NULL;
    /* the ring's dbias comes through the mesh door (mattn_ring_backward_ex has none) */
    float *dbias = p->bias && !(c->op == MATTN_OP_RING && c->ex) ? nans(nbias) : NULL;
    mattn_ring_options ro = mattn_ring_options_default();
    ro.comm = c->comm;
    int rc;
    if (c->op == MATTN_OP_RING && c->ex)
        rc = mattn_ring_backward_ex(m, &shape, &q, &k, &v, &o, lse, &dout, &dq, &dk, &dv,
                                    dsinks, &opts, &ro, stats);
    else
        rc = mattn_mesh_backward(m, &shape, c->op, &q, &k, &v, &o, lse, &dout, &dq, &dk, &dv,
                                 dsinks, dbias, &opts, &ro);
    if (rc == MATTN_OK) {
        int dp, tp, sp;
        mattn_mesh_shape(m, &dp, &tp, &sp);
        char what[160];
        snprintf(what, sizeof what, "%s backward mesh %dx%dx%d rank %d %s/%s tensors=%c th=%d",
                 mattn_op_name(c->op), dp, tp, sp, mattn_mesh_rank(m),
                 mattn_seq_layout_name(c->layout), mattn_ring_comm_name(c->comm), L,
                 c->threads);
        const rg_grads *g = &x->g;
        check_rows(what, "dq", &dq, g->dq, g->tol_dq, p->T, p->Hq, D, s.b0, s.trow, s.hq0);
        check_rows(what, "dk", &dk, g->dk, g->tol_dk, p->S, p->Hkv, D, s.b0, s.srow, s.hk0);
        check_rows(what, "dv", &dv, g->dv, g->tol_dv, p->S, p->Hkv, Dv, s.b0, s.srow, s.hk0);
        if (dsinks)
            rg_check(what, "dsinks", dsinks, g->dsinks, g->tol_dsinks, p->Hq);
        if (dbias)
            rg_check(what, "dbias", dbias, g->dbias, g->tol_dbias, (int64_t)nbias);
    }
    for (int i = 0; i < 9; i++)
        free(buf[i]);
    free(qs), free(ks), free(dsinks), free(dbias);
    sh_shard_free(&s);
    return rc;
}

/* ------------------------------------------------------------------ meshes */

#define MAX_MESHES 16
static mattn_mesh *meshes[MAX_MESHES];
static int n_meshes;

static int mesh_sp(const mattn_mesh *m)
{
    int dp, tp, sp;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    return sp;
}

/* The ring on every mesh, both layouts, both doors and comm modes, both
 * tensor layouts; the partitioned operators on the meshes with sp = 1. */
static void check_everywhere(const tc_problem *p, uint64_t seed, int threads)
{
    bref x = bref_make(p, seed);
    for (int mi = 0; mi < n_meshes; mi++) {
        for (int l = 0; l < 2; l++) {
            cfg c = {MATTN_OP_RING, l ? MATTN_SEQ_ZIGZAG : MATTN_SEQ_CONTIGUOUS,
                     l ? MATTN_RING_COMM_SENDRECV : MATTN_RING_COMM_OVERLAP,
                     (mi + l) % 2 ? 'h' : 't', threads, (mi + l) % 2};
            assert_int_equal(run_one(p, &x, meshes[mi], &c, NULL), MATTN_OK);
        }
        if (mesh_sp(meshes[mi]) == 1) {
            static const mattn_op ops[] = {MATTN_OP_FLASH, MATTN_OP_VANILLA, MATTN_OP_SDPA,
                                           MATTN_OP_SPLASH};
            for (int i = 0; i < 4; i++) {
                cfg c = {ops[i], MATTN_SEQ_CONTIGUOUS, MATTN_RING_COMM_OVERLAP,
                         i % 2 ? 'h' : 't', threads, 0};
                assert_int_equal(run_one(p, &x, meshes[mi], &c, NULL), MATTN_OK);
            }
        }
    }
    bref_free(&x);
}

/* ------------------------------------------------------------------ tests */

static void test_plain_uneven(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(1, 2, 61, 61, 2, 2, 16, 16); /* 61: uneven for 2, 3, 4 ranks */
    check_everywhere(&p, 101, 1);
    tc_free(&p);
}

static void test_causal_gqa_mqa(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(2, 2, 97, 97, 4, 2, 16, 16);
    p.causal = 1;
    check_everywhere(&p, 102, 1);
    tc_free(&p);
    p = tc_seeded(3, 1, 66, 66, 4, 1, 16, 8); /* MQA: with tp > 1 some ranks hold no heads */
    p.causal = 1;
    check_everywhere(&p, 103, 2);
    tc_free(&p);
}

static void test_cross_lengths_offsets(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(4, 1, 40, 101, 2, 1, 16, 12); /* T != S, Dv != D */
    p.causal = 1;
    p.q_offset = 61;
    check_everywhere(&p, 104, 1);
    p.q_offset = -7, p.kv_offset = 3; /* first rows see nothing: zero gradients */
    check_everywhere(&p, 105, 1);
    tc_free(&p);
}

static void test_window_chunk(void **state)
{
    (void)state;
    static const int64_t w[][2] = {{5, 0}, {3, 7}, {0, 0}, {9, -1}};
    tc_problem p = tc_seeded(5, 1, 83, 83, 2, 1, 8, 8);
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        p.window_left = w[i][0], p.window_right = w[i][1];
        p.causal = (int)(i % 2);
        check_everywhere(&p, 106 + i, 1);
    }
    p.window_left = p.window_right = -1;
    p.chunk = 8, p.causal = 1;
    check_everywhere(&p, 111, 1);
    p.causal = 0, p.chunk = 30, p.q_offset = 13, p.kv_offset = -5;
    check_everywhere(&p, 112, 1);
    tc_free(&p);
}

static void test_segments(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(6);
    tc_problem p = tc_make(&r, 2, 71, 71, 4, 2, 16, 16, 1.0);
    tc_add_segments(&p);
    tc_random_segments(&r, p.q_seg, 2, 71, 1000);
    tc_random_segments(&r, p.kv_seg, 2, 71, 3);
    p.causal = 1;
    check_everywhere(&p, 113, 1);
    tc_free(&p);
}

static void test_sinks_softcap_dropout(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(11);
    tc_problem p = tc_make(&r, 2, 50, 50, 4, 2, 16, 16, 1.0);
    p.sinks = tl_alloc(sizeof(float) * 4);
    p.sinks[0] = 0.5f, p.sinks[1] = -3.0f, p.sinks[2] = 4.0f, p.sinks[3] = -INFINITY;
    check_everywhere(&p, 114, 1);
    p.causal = 1, p.q_offset = -4; /* masked rows: only the sink */
    check_everywhere(&p, 115, 1);
    tc_free(&p);
    r = tl_rng_make(12);
    p = tc_make(&r, 2, 57, 57, 4, 2, 32, 16, 3.0);
    p.softcap = 5.0, p.causal = 1;
    check_everywhere(&p, 116, 1);
    p.softcap = 20.0;
    p.dropout_p = 0.3f, p.seed = 77, p.drop_b0 = 3, p.drop_h0 = 5;
    check_everywhere(&p, 117, 2);
    tc_free(&p);
}

static void test_mask_bias(void **state)
{
    (void)state;
    /* Batch-shared masks reach the ring's step skipping (splash
     * classification); a per-batch one does not. dbias on every mesh, full
     * and broadcast over batch and / or heads. */
    static const int64_t dims[][2] = {{1, 1}, {2, 4}, {1, 4}};
    for (size_t c = 0; c < 3; c++) {
        tl_rng r = tl_rng_make(20 + c);
        tc_problem p = tc_make(&r, 2, 45, 53, 4, 2, 8, 8, 1.0);
        tc_add_mask(&p, dims[c][0], dims[c][1]);
        /* Mostly a band, so whole steps are empty on some ranks. */
        for (int64_t x = 0; x < p.mask_b * p.mask_h * p.T * p.S; x++) {
            int64_t i = x / p.S % p.T, j = x % p.S;
            p.mask[x] = (uint8_t)(j <= i + 3 && j + 12 >= i && tl_int(&r, 4) != 0);
        }
        tc_random_bias(&r, &p, dims[2 - c][0], dims[2 - c][1], 2.0);
        p.causal = (int)(c % 2);
        check_everywhere(&p, 120 + c, 1);
        tc_free(&p);
    }
}

/* The schedule: how many messages a causal / windowed ring sends, and that
 * the work skipped really is skipped. */
static void test_schedule(void **state)
{
    (void)state;
    int P = tl_size();
    tc_problem p = tc_seeded(30, 1, 96, 96, 2, 1, 8, 8);
    p.window_left = 5, p.window_right = 0, p.causal = 1; /* reach: the previous rank only */
    bref x = bref_make(&p, 130);
    mattn_mesh *m = meshes[0]; /* 1 x 1 x P */
    cfg c = {MATTN_OP_RING, MATTN_SEQ_CONTIGUOUS, MATTN_RING_COMM_SENDRECV, 't', 1, 1};
    mattn_ring_stats st;
    assert_int_equal(run_one(&p, &x, m, &c, &st), MATTN_OK);
    /* Shifts {0, 1}: one hop forward, one (dK/dV only) home. */
    assert_int_equal(st.messages_sent, P > 1 ? 2 : 0);
    assert_int_equal(st.steps, mattn_mesh_rank(m) == 0 || P == 1 ? 1 : 2);
    if (P > 1)
        assert_true(st.bytes_sent < 2 * (int64_t)(2 * 24 * (8 + 8) * 4 * 2) + 3 * 4096);
    bref_free(&x);
    /* Zigzag causal: every shift, every step computed. */
    c.layout = MATTN_SEQ_ZIGZAG;
    p.window_left = -1, p.window_right = -1;
    x = bref_make(&p, 131);
    assert_int_equal(run_one(&p, &x, m, &c, &st), MATTN_OK);
    assert_int_equal(st.messages_sent, P > 1 ? P : 0);
    assert_int_equal(st.steps, P);
    bref_free(&x);
    tc_free(&p);
}

/* A bad argument on the last rank only: every rank returns its error. */
static void test_bad_input_one_rank(void **state)
{
    (void)state;
    alarm(60); /* a hang fails the program instead of blocking the suite */
    int last = tl_rank() == tl_size() - 1;
    tc_problem p = tc_seeded(40, 1, 32, 32, 2, 1, 8, 8);
    p.causal = 1;
    bref x = bref_make(&p, 140);
    for (int mi = 0; mi < n_meshes; mi++) {
        mattn_mesh *m = meshes[mi];
        sh_shard s = sh_shard_of(&p, m, MATTN_SEQ_ZIGZAG);
        mattn_dist_shape shape = {p.B, p.T, p.S, p.Hq, p.Hkv, MATTN_SEQ_ZIGZAG};
        float *b = tl_alloc(sizeof(float) * (size_t)(64 * 32 * 8 + 1));
        float *lse = tl_alloc(sizeof(float) * (size_t)(p.Hq * p.T + 1));
        mattn_tensor q = mattn_tensor_bthd(b, s.nb, s.T, s.nhq, 8);
        mattn_tensor kv = mattn_tensor_bthd(b, s.nb, s.S, s.nhk, 8);
        float *g = tl_alloc(sizeof(float) * (size_t)(64 * 32 * 8 + 1));
        float *g2 = tl_alloc(sizeof(float) * (size_t)(64 * 32 * 8 + 1));
        float *g3 = tl_alloc(sizeof(float) * (size_t)(64 * 32 * 8 + 1));
        mattn_tensor dq = mattn_tensor_bthd(g, s.nb, s.T, s.nhq, 8);
        mattn_tensor dk = mattn_tensor_bthd(g2, s.nb, s.S, s.nhk, 8);
        mattn_tensor dv = mattn_tensor_bthd(g3, s.nb, s.S, s.nhk, 8);
        mattn_tensor bad_dq = dq;
        bad_dq.dim = 4; /* wrong head dim */
        mattn_options opts = tc_options(&p);
        float nan_lse = NAN;
        /* 1: dq of the wrong shape on the last rank (ring and mesh door). */
        int rc = mattn_ring_backward(m, &shape, &q, &kv, &kv, &q, lse, &q,
                                     last ? &bad_dq : &dq, &dk, &dv, NULL, &opts);
        assert_int_equal(rc, MATTN_ERR_SHAPE);
        rc = mattn_mesh_backward(m, &shape, MATTN_OP_RING, &q, &kv, &kv, &q, lse, &q,
                                 last ? &bad_dq : &dq, &dk, &dv, NULL, NULL, &opts, NULL);
        assert_int_equal(rc, MATTN_ERR_SHAPE);
        /* 2: lse missing / NaN on the last rank. */
        rc = mattn_ring_backward(m, &shape, &q, &kv, &kv, &q, last ? NULL : lse, &q, &dq, &dk,
                                 &dv, NULL, &opts);
        /* (a last rank with an empty shard has no lse to miss) */
        int64_t mine = last && s.T * s.nhq * s.nb > 0, any;
        MPI_Allreduce(&mine, &any, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
        assert_int_equal(rc, any ? MATTN_ERR_ARG : MATTN_OK);
        if (last && s.T * s.nhq * s.nb > 0)
            lse[0] = nan_lse;
        rc = mattn_ring_backward(m, &shape, &q, &kv, &kv, &q, lse, &q, &dq, &dk, &dv, NULL,
                                 &opts);
        assert_int_equal(rc, any ? MATTN_ERR_ARG : MATTN_OK);
        lse[0] = 0.0f;
        /* 3: dsinks without sinks on one rank: its error everywhere, no hang. */
        float ds[2];
        rc = mattn_ring_backward(m, &shape, &q, &kv, &kv, &q, lse, &q, &dq, &dk, &dv,
                                 last ? ds : NULL, &opts);
        assert_int_equal(rc, MATTN_ERR_ARG);
        /* 4: dbias without a bias on one rank: its error everywhere; a
         * partitioned op on sp > 1 is unsupported. */
        rc = mattn_mesh_backward(m, &shape, MATTN_OP_RING, &q, &kv, &kv, &q, lse, &q, &dq, &dk,
                                 &dv, NULL, last ? ds : NULL, &opts, NULL);
        assert_int_equal(rc, MATTN_ERR_ARG);
        if (mesh_sp(m) > 1) {
            rc = mattn_mesh_backward(m, &shape, MATTN_OP_FLASH, &q, &kv, &kv, &q, lse, &q, &dq,
                                     &dk, &dv, NULL, NULL, &opts, NULL);
            assert_int_equal(rc, MATTN_ERR_UNSUPPORTED);
        }
        /* 5: ring options differ on one rank (the backward tags its operator,
         * the ring options must still be compared). */
        if (tl_size() > 1) {
            mattn_ring_options ro = mattn_ring_options_default();
            ro.skip_comm = last;
            rc = mattn_ring_backward_ex(m, &shape, &q, &kv, &kv, &q, lse, &q, &dq, &dk, &dv,
                                        NULL, &opts, &ro, NULL);
            assert_int_equal(rc, MATTN_ERR_ARG);
            assert_non_null(strstr(mattn_last_error(), "skip_comm"));
        }
        /* 6: one rank calls forward, the others backward: reported, no hang. */
        if (tl_size() > 1) {
            if (last)
                rc = mattn_ring_forward(m, &shape, &q, &kv, &kv, &dq, NULL, &opts);
            else
                rc = mattn_ring_backward(m, &shape, &q, &kv, &kv, &q, lse, &q, &dq, &dk, &dv,
                                         NULL, &opts);
            assert_int_equal(rc, MATTN_ERR_ARG);
            assert_non_null(strstr(mattn_last_error(), "operator"));
        }
        free(b), free(lse), free(g), free(g2), free(g3);
        sh_shard_free(&s);
    }
    bref_free(&x);
    tc_free(&p);
    alarm(0);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    n_meshes = sh_meshes_create(meshes, MAX_MESHES);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_uneven),
        cmocka_unit_test(test_causal_gqa_mqa),
        cmocka_unit_test(test_cross_lengths_offsets),
        cmocka_unit_test(test_window_chunk),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_sinks_softcap_dropout),
        cmocka_unit_test(test_mask_bias),
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_bad_input_one_rank),
    };
    int failed = tl_run_all("ring_backward", tests, sizeof tests / sizeof tests[0]);
    sh_meshes_free(meshes, n_meshes);
    MPI_Finalize();
    return failed ? 1 : 0;
}
