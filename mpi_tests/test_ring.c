/* Ring attention (SPEC §7) against the float64 reference, on every mesh
 * shape the job's size allows (dp x tp x sp = ranks), both sequence layouts
 * and both transports, for every option of SPEC §3-4, GQA/MQA and uneven or
 * empty shards. Every rank builds the same global problem, takes its own
 * shard with the test's own reading of the layouts (common/shards.c, not the
 * library's), runs the ring and checks its rows against the reference. The
 * single-rank flash result of the same global problem is checked against
 * the same reference, so ring == flash == reference. Collective: every test
 * runs on every rank. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cases.h"
#include "common/shards.h"

/* ------------------------------------------------------------------ reference */

typedef struct ref {
    double *o, *lse, *tol_o, *tol_lse;
} ref;

/* The float64 reference, and single-rank flash on the whole problem checked
 * against it (the "== flash" leg of ring == flash == reference). */
static ref ref_make(const tc_problem *p)
{
    size_t nrow = (size_t)(p->B * p->T * p->Hq), nl = (size_t)(p->B * p->Hq * p->T);
    ref r = {tl_alloc(sizeof(double) * (nrow * (size_t)p->Dv + 1)),
             tl_alloc(sizeof(double) * (nl + 1)), tl_alloc(sizeof(double) * (nrow + 1)),
             tl_alloc(sizeof(double) * (nl + 1))};
    tc_reference(p, r.o, r.lse, NULL, r.tol_o, r.tol_lse, NULL);
    float *o = tl_alloc(sizeof(float) * (nrow * (size_t)p->Dv + 1));
    float *lse = tl_alloc(sizeof(float) * (nl + 1));
    mattn_tensor q = mattn_tensor_bthd(p->q, p->B, p->T, p->Hq, p->D);
    mattn_tensor k = mattn_tensor_bthd(p->k, p->B, p->S, p->Hkv, p->D);
    mattn_tensor v = mattn_tensor_bthd(p->v, p->B, p->S, p->Hkv, p->Dv);
    mattn_tensor to = mattn_tensor_bthd(o, p->B, p->T, p->Hq, p->Dv);
    mattn_options opts = tc_options(p);
    assert_int_equal(mattn_flash_forward(&q, &k, &v, &to, lse, &opts), MATTN_OK);
    tc_check_o("single-rank flash", p, o, r.o, r.tol_o);
    tc_check_lse("single-rank flash", p, lse, r.lse, r.tol_lse);
    free(o);
    free(lse);
    return r;
}

static void ref_free(ref *r)
{
    free(r->o), free(r->lse), free(r->tol_o), free(r->tol_lse);
}

/* ------------------------------------------------------------------ one ring run */

typedef struct run_cfg {
    mattn_seq_layout layout;
    mattn_ring_comm comm;
    char tensors; /* 't' BTHD, 'h' BHTD local tensors */
    int block_q, threads;
    int want_lse;
} run_cfg;

/* Runs the ring for this rank's shard and checks its rows against the
 * reference. Returns the status; *o_out / *lse_out (may be NULL) receive the
 * local outputs in BTHD / [B, Hq, T] order for comparisons between runs. */
static int run_ring(const tc_problem *p, mattn_mesh *m, const run_cfg *cfg, const ref *r,
                    mattn_ring_stats *stats, float **o_out, float **lse_out)
{
    int dp, tp, sp;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    sh_shard s = sh_shard_make(p, dp, tp, sp, mattn_mesh_rank(m), cfg->layout);

    /* The library's view of the shard must be the test's. */
    mattn_dist_shape shape = {p->B, p->T, p->S, p->Hq, p->Hkv, cfg->layout};
    mattn_shard lib;
    assert_int_equal(mattn_mesh_shard(m, &shape, mattn_mesh_rank(m), &lib), MATTN_OK);
    assert_int_equal(lib.batch_start, s.b0);
    assert_int_equal(lib.batch_count, s.nb);
    assert_int_equal(lib.q_head_start, s.hq0);
    assert_int_equal(lib.q_head_count, s.nhq);
    assert_int_equal(lib.q_len, s.T);
    assert_int_equal(lib.kv_len, s.S);

    size_t nq = (size_t)(s.nb * s.T * s.nhq * p->D), nk = (size_t)(s.nb * s.S * s.nhk * p->D);
    size_t nv = (size_t)(s.nb * s.S * s.nhk * p->Dv), no = (size_t)(s.nb * s.T * s.nhq * p->Dv);
    size_t nl = (size_t)(s.nb * s.nhq * s.T);
    float *qb = tl_alloc(sizeof(float) * (nq + 1)), *kb = tl_alloc(sizeof(float) * (nk + 1));
    float *vb = tl_alloc(sizeof(float) * (nv + 1)), *ob = tl_alloc(sizeof(float) * (no + 1));
    float *lse = tl_alloc(sizeof(float) * (nl + 1));
    int32_t *qs, *ks;
    mattn_tensor q = tl_view(qb, cfg->tensors, s.nb, s.T, s.nhq, p->D);
    mattn_tensor k = tl_view(kb, cfg->tensors, s.nb, s.S, s.nhk, p->D);
    mattn_tensor v = tl_view(vb, cfg->tensors, s.nb, s.S, s.nhk, p->Dv);
    mattn_tensor o = tl_view(ob, cfg->tensors, s.nb, s.T, s.nhq, p->Dv);
    sh_take(p->q, p->T, p->Hq, p->D, &q, s.b0, s.trow, s.hq0);
    sh_take(p->k, p->S, p->Hkv, p->D, &k, s.b0, s.srow, s.hk0);
    sh_take(p->v, p->S, p->Hkv, p->Dv, &v, s.b0, s.srow, s.hk0);
    /* NaN everywhere: an output the ring forgets to write fails. */
    for (size_t x = 0; x < no; x++)
        ob[x] = NAN;
    for (size_t x = 0; x < nl; x++)
        lse[x] = NAN;
    mattn_options opts = tc_options(p);
    opts.block_q = cfg->block_q;
    opts.threads = cfg->threads;
    sh_take_segments(p, &s, &opts, &qs, &ks);
    mattn_ring_options ro = mattn_ring_options_default();
    ro.comm = cfg->comm;
    int rc = mattn_ring_forward_ex(m, &shape, &q, &k, &v, &o, cfg->want_lse ? lse : NULL, &opts,
                                   &ro, stats);
    if (rc == MATTN_OK) {
        char what[160];
        snprintf(what, sizeof what, "ring mesh %dx%dx%d rank %d %s/%s tensors=%c bq=%d th=%d",
                 dp, tp, sp, mattn_mesh_rank(m), mattn_seq_layout_name(cfg->layout),
                 mattn_ring_comm_name(cfg->comm), cfg->tensors, cfg->block_q, cfg->threads);
        for (int64_t b = 0; b < s.nb; b++)
            for (int64_t t = 0; t < s.T; t++)
                for (int64_t h = 0; h < s.nhq; h++) {
                    int64_t gb = s.b0 + b, gt = s.trow[t], gh = s.hq0 + h;
                    int64_t row = (gb * p->T + gt) * p->Hq + gh;
                    const float *got = sh_at(&o, b, t, h);
                    for (int64_t d = 0; d < p->Dv; d++) {
                        double want = r->o[row * p->Dv + d];
                        if (!(fabs(got[d] - want) <= r->tol_o[row]))
                            fail_msg("%s: o[b=%lld, t=%lld, h=%lld, d=%lld] = %.9g, reference "
                                     "%.9g, tol %.3g", what, (long long)gb, (long long)gt,
                                     (long long)gh, (long long)d, got[d], want, r->tol_o[row]);
                    }
                    if (!cfg->want_lse)
                        continue;
                    int64_t li = (gb * p->Hq + gh) * p->T + gt;
                    double gl = lse[(b * s.nhq + h) * s.T + t], wl = r->lse[li];
                    int ok = wl == -INFINITY ? gl == -INFINITY : fabs(gl - wl) <= r->tol_lse[li];
                    if (!ok)
                        fail_msg("%s: lse[b=%lld, h=%lld, t=%lld] = %.9g, reference %.9g, tol "
                                 "%.3g", what, (long long)gb, (long long)gh, (long long)gt, gl,
                                 wl, r->tol_lse[li]);
                }
        if (o_out) {
            *o_out = tl_alloc(sizeof(float) * (no + 1));
            for (int64_t b = 0; b < s.nb; b++)
                for (int64_t t = 0; t < s.T; t++)
                    for (int64_t h = 0; h < s.nhq; h++)
                        memcpy(*o_out + ((b * s.T + t) * s.nhq + h) * p->Dv, sh_at(&o, b, t, h),
                               sizeof(float) * (size_t)p->Dv);
        }
        if (lse_out) {
            *lse_out = lse;
            lse = NULL;
        }
    }
    free(qb), free(kb), free(vb), free(ob), free(lse), free(qs), free(ks);
    sh_shard_free(&s);
    return rc;
}

/* ------------------------------------------------------------------ meshes */

#define MAX_MESHES 16
static mattn_mesh *meshes[MAX_MESHES];
static int n_meshes;

/* Every mesh x layout x transport (and both local tensor layouts on the
 * first mesh). The two transports must agree bit for bit: same pieces,
 * same merge order. */
static void check_everywhere(const tc_problem *p, int block_q, int threads)
{
    ref r = ref_make(p);
    for (int mi = 0; mi < n_meshes; mi++)
        for (int l = 0; l < 2; l++) {
            float *o1 = NULL, *o2 = NULL, *l1 = NULL, *l2 = NULL;
            run_cfg cfg = {.layout = l ? MATTN_SEQ_ZIGZAG : MATTN_SEQ_CONTIGUOUS,
                           .comm = MATTN_RING_COMM_OVERLAP, .tensors = 't',
                           .block_q = block_q, .threads = threads, .want_lse = 1};
            assert_int_equal(run_ring(p, meshes[mi], &cfg, &r, NULL, &o1, &l1), MATTN_OK);
            cfg.comm = MATTN_RING_COMM_SENDRECV;
            cfg.tensors = mi == 0 ? 'h' : 't';
            assert_int_equal(run_ring(p, meshes[mi], &cfg, &r, NULL, &o2, &l2), MATTN_OK);
            int dp, tp, sp;
            mattn_mesh_shape(meshes[mi], &dp, &tp, &sp);
            mattn_shard sh;
            mattn_dist_shape shape = {p->B, p->T, p->S, p->Hq, p->Hkv, cfg.layout};
            mattn_mesh_shard(meshes[mi], &shape, mattn_mesh_rank(meshes[mi]), &sh);
            size_t no = (size_t)(sh.batch_count * sh.q_len * sh.q_head_count * p->Dv);
            size_t nl = (size_t)(sh.batch_count * sh.q_len * sh.q_head_count);
            if (no > 0)
                assert_memory_equal(o1, o2, sizeof(float) * no);
            if (nl > 0)
                assert_memory_equal(l1, l2, sizeof(float) * nl);
            free(o1), free(o2), free(l1), free(l2);
        }
    /* lse not wanted: the ring keeps its own accumulator. */
    run_cfg cfg = {.layout = MATTN_SEQ_ZIGZAG, .comm = MATTN_RING_COMM_OVERLAP,
                   .tensors = 't', .block_q = block_q, .threads = threads, .want_lse = 0};
    assert_int_equal(run_ring(p, meshes[0], &cfg, &r, NULL, NULL, NULL), MATTN_OK);
    ref_free(&r);
}

/* ------------------------------------------------------------------ tests */

static void test_plain(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(1, 2, 61, 61, 2, 2, 16, 16); /* 61: uneven for 2, 3, 4 ranks */
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_causal_gqa(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(2, 2, 97, 97, 4, 2, 16, 16);
    p.causal = 1;
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_cross_lengths_offsets(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(3, 1, 40, 101, 2, 1, 16, 12); /* T != S, Dv != D */
    p.causal = 1;
    p.q_offset = 61; /* bottom-right: chunked prefill */
    check_everywhere(&p, 0, 1);
    p.q_offset = -7, p.kv_offset = 3; /* first rows see nothing */
    check_everywhere(&p, 0, 1);
    p.causal = 0;
    p.q_offset = 1000, p.kv_offset = 990;
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_window(void **state)
{
    (void)state;
    static const int64_t w[][2] = {{5, 0}, {3, 7}, {0, 0}, {-1, 4}, {9, -1}, {40, 40}};
    tc_problem p = tc_seeded(4, 1, 83, 83, 2, 1, 8, 8);
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        p.window_left = w[i][0], p.window_right = w[i][1];
        p.causal = (int)(i % 2);
        check_everywhere(&p, 0, 1);
    }
    tc_free(&p);
}

static void test_chunk(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(5, 2, 77, 77, 2, 2, 8, 8);
    p.chunk = 8;
    p.causal = 1; /* chunked causal */
    check_everywhere(&p, 0, 1);
    p.causal = 0, p.chunk = 30, p.q_offset = 13, p.kv_offset = -5;
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_segments(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(6);
    tc_problem p = tc_make(&r, 2, 71, 71, 4, 2, 16, 16, 1.0);
    tc_add_segments(&p);
    tc_random_segments(&r, p.q_seg, 2, 71, 1000);
    memcpy(p.kv_seg, p.q_seg, sizeof(int32_t) * 2 * 71);
    p.causal = 1;
    check_everywhere(&p, 0, 1);
    tc_random_segments(&r, p.kv_seg, 2, 71, 3); /* kv ids of their own */
    p.causal = 0;
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_mask_bias(void **state)
{
    (void)state;
    static const int64_t dims[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (size_t c = 0; c < 4; c++) {
        tl_rng r = tl_rng_make(7 + c);
        tc_problem p = tc_make(&r, 2, 45, 53, 4, 2, 8, 8, 1.0);
        tc_random_mask(&r, &p, dims[c][0], dims[c][1], 3);
        tc_random_bias(&r, &p, dims[3 - c][0], dims[3 - c][1], 2.0);
        p.causal = (int)(c % 2);
        check_everywhere(&p, 0, 1);
        tc_free(&p);
    }
}

static void test_sinks(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(11);
    tc_problem p = tc_make(&r, 2, 50, 50, 4, 2, 16, 16, 1.0);
    p.sinks = tl_alloc(sizeof(float) * 4);
    p.sinks[0] = 0.5f, p.sinks[1] = -3.0f, p.sinks[2] = 4.0f, p.sinks[3] = -INFINITY;
    check_everywhere(&p, 0, 1);
    p.causal = 1, p.q_offset = -4; /* masked rows: o = 0, lse = sink, folded once */
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_softcap_dropout(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(12);
    tc_problem p = tc_make(&r, 2, 57, 57, 4, 2, 32, 16, 3.0);
    p.softcap = 5.0;
    p.causal = 1;
    check_everywhere(&p, 0, 1);
    p.softcap = 0.0;
    p.dropout_p = 0.3f, p.seed = 77;
    check_everywhere(&p, 0, 1);
    p.drop_b0 = 3, p.drop_h0 = 5; /* the global problem is itself a shard */
    p.softcap = 20.0;
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_mqa_and_empty_head_shards(void **state)
{
    (void)state;
    /* Hkv = 1: with tp > 1 some ranks hold no heads at all. */
    tc_problem p = tc_seeded(13, 2, 66, 66, 4, 1, 16, 16);
    p.causal = 1;
    check_everywhere(&p, 0, 1);
    tc_free(&p);
    /* Hkv = 3 over tp = 2 or 4: uneven and empty head groups. */
    p = tc_seeded(14, 1, 30, 30, 6, 3, 8, 8);
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_tiny_and_empty_shards(void **state)
{
    (void)state;
    /* T, S < 2 * sp: zigzag leaves ranks with one run or none. */
    static const int64_t ts[][2] = {{3, 3}, {1, 5}, {5, 1}, {2, 7}, {1, 1}};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        tc_problem p = tc_seeded(15 + i, 1, ts[i][0], ts[i][1], 2, 1, 8, 8);
        p.causal = (int)(i % 2);
        p.q_offset = p.causal ? p.S - p.T : 0;
        check_everywhere(&p, 0, 1);
        tc_free(&p);
    }
    /* S = 0: every row fully masked; B = 1 with dp > 1: empty batch shards. */
    tc_problem p = tc_seeded(20, 1, 9, 0, 2, 2, 8, 8);
    check_everywhere(&p, 0, 1);
    tc_free(&p);
    p = tc_seeded(21, 1, 0, 9, 2, 2, 8, 8);
    check_everywhere(&p, 0, 1);
    tc_free(&p);
}

static void test_pieces_and_threads(void **state)
{
    (void)state;
    /* Small q blocks: many pieces per run, so several partials per row and
     * polls between kernel calls; 2 threads per rank in the kernel and merge. */
    tc_problem p = tc_seeded(22, 2, 90, 90, 4, 2, 16, 16);
    p.causal = 1;
    check_everywhere(&p, 4, 1);
    check_everywhere(&p, 7, 2);
    p.causal = 0, p.window_left = 10, p.window_right = 2;
    check_everywhere(&p, 3, 1);
    tc_free(&p);
}

static void test_everything_at_once(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(23);
    tc_problem p = tc_make(&r, 2, 96, 130, 6, 2, 20, 12, 1.0);
    tc_every_option(&r, &p); /* q_offset = S - T = 34 */
    check_everywhere(&p, 0, 1);
    check_everywhere(&p, 5, 2);
    tc_free(&p);
}

static void test_random_combinations(void **state)
{
    (void)state;
    /* kv_offset, mask, bias and scale are not drawn here. */
    static const tc_random_spec spec = {.max_len = 90, .max_dim = 24, .max_span = 30};
    for (int iter = 0; iter < 10; iter++) {
        tl_rng r = tl_rng_make(500 + iter);
        tc_problem p = tc_random_problem(&r, &spec, (uint64_t)iter);
        check_everywhere(&p, (int)tl_int(&r, 12), 1 + (int)tl_int(&r, 2));
        tc_free(&p);
    }
}

/* ------------------------------------------------------------------ schedule */

static int64_t floordiv(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* Brute force from SPEC §3: may some query of the rows `qr` see some key of
 * the rows `kr` under causal / window / chunk? */
static int t_sees(const tc_problem *p, const int64_t *qr, int64_t nq, const int64_t *kr,
                  int64_t nk)
{
    for (int64_t a = 0; a < nq; a++)
        for (int64_t c = 0; c < nk; c++) {
            int64_t qp = p->q_offset + qr[a], kp = p->kv_offset + kr[c];
            if (p->causal && kp > qp)
                continue;
            if (p->window_left >= 0 && kp < qp - p->window_left)
                continue;
            if (p->window_right >= 0 && kp > qp + p->window_right)
                continue;
            if (p->chunk > 0 && floordiv(qp, p->chunk) != floordiv(kp, p->chunk))
                continue;
            return 1;
        }
    return 0;
}

/* Exactly the transfers positions demand: rank r receives from src iff one
 * of its queries may see one of src's keys, and steps that see nothing are
 * not computed. Checked against a brute-force count for each rank. */
static void check_schedule(const tc_problem *p, mattn_seq_layout layout)
{
    ref r = ref_make(p);
    for (int mi = 0; mi < n_meshes; mi++) {
        int dp, tp, sp, rank = mattn_mesh_rank(meshes[mi]);
        mattn_mesh_shape(meshes[mi], &dp, &tp, &sp);
        sh_shard me = sh_shard_make(p, dp, tp, sp, rank, layout);
        int64_t want_recv = 0, want_send = 0, want_steps = 0;
        int active = me.nb > 0 && me.nhq > 0;
        for (int other = 0; other < sp && active; other++) {
            sh_shard o = sh_shard_make(p, dp, tp, sp, rank - me.spr + other, layout);
            int in = t_sees(p, me.trow, me.T, o.srow, o.S);
            int out = t_sees(p, o.trow, o.T, me.srow, me.S);
            want_steps += in;
            if (other != me.spr)
                want_recv += in, want_send += out;
            sh_shard_free(&o);
        }
        for (int c = 0; c < 2; c++) {
            run_cfg cfg = {.layout = layout, .comm = c ? MATTN_RING_COMM_SENDRECV
                                                       : MATTN_RING_COMM_OVERLAP,
                           .tensors = 't', .want_lse = 1};
            mattn_ring_stats st;
            assert_int_equal(run_ring(p, meshes[mi], &cfg, &r, &st, NULL, NULL), MATTN_OK);
            assert_int_equal(st.messages_received, want_recv);
            assert_int_equal(st.messages_sent, want_send);
            assert_int_equal(st.steps, want_steps);
            assert_true(st.bytes_received >= want_recv * (int64_t)sizeof(float) * me.nb * me.nhk *
                                                  (p->D + p->Dv));
            /* The job totals balance: every message sent is received. */
            int64_t mine[2] = {st.messages_sent, st.messages_received}, tot[2];
            MPI_Allreduce(mine, tot, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
            assert_int_equal(tot[0], tot[1]);
        }
        sh_shard_free(&me);
    }
    ref_free(&r);
}

static void test_schedule_causal(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(30, 1, 64, 64, 2, 1, 8, 8);
    p.causal = 1;
    check_schedule(&p, MATTN_SEQ_CONTIGUOUS); /* no wrapped-around transfers */
    check_schedule(&p, MATTN_SEQ_ZIGZAG);     /* everybody needs everybody */
    tc_free(&p);
}

static void test_schedule_window(void **state)
{
    (void)state;
    /* A window narrower than a shard: only neighbours exchange, both sides
     * for a two-sided window. */
    tc_problem p = tc_seeded(31, 1, 96, 96, 2, 1, 8, 8);
    p.window_left = 5, p.window_right = 5;
    check_schedule(&p, MATTN_SEQ_CONTIGUOUS);
    check_schedule(&p, MATTN_SEQ_ZIGZAG);
    p.causal = 1, p.window_right = -1;
    check_schedule(&p, MATTN_SEQ_CONTIGUOUS);
    p.causal = 0, p.window_left = 0, p.window_right = 0; /* the diagonal only */
    check_schedule(&p, MATTN_SEQ_CONTIGUOUS);
    p.window_left = -1, p.window_right = -1, p.chunk = 16; /* chunks inside shards */
    check_schedule(&p, MATTN_SEQ_CONTIGUOUS);
    p.chunk = 0, p.causal = 1, p.q_offset = -200; /* nobody sees anything */
    check_schedule(&p, MATTN_SEQ_ZIGZAG);
    tc_free(&p);
}

static void test_skip_comm_same_work(void **state)
{
    (void)state;
    /* skip_comm computes the same steps (so the benchmark's overhead figure
     * compares equal work) and sends nothing. */
    tc_problem p = tc_seeded(32, 1, 64, 64, 4, 2, 8, 8);
    p.causal = 1;
    mattn_mesh *m = meshes[0];
    int dp, tp, sp;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    sh_shard s = sh_shard_make(&p, dp, tp, sp, mattn_mesh_rank(m), MATTN_SEQ_ZIGZAG);
    float *q = tl_alloc(sizeof(float) * (size_t)(s.nb * s.T * s.nhq * 8 + 1));
    float *k = tl_alloc(sizeof(float) * (size_t)(s.nb * s.S * s.nhk * 8 + 1));
    float *o = tl_alloc(sizeof(float) * (size_t)(s.nb * s.T * s.nhq * 8 + 1));
    mattn_tensor tq = mattn_tensor_bthd(q, s.nb, s.T, s.nhq, 8);
    mattn_tensor tk = mattn_tensor_bthd(k, s.nb, s.S, s.nhk, 8);
    mattn_tensor to = mattn_tensor_bthd(o, s.nb, s.T, s.nhq, 8);
    mattn_dist_shape shape = {1, 64, 64, 4, 2, MATTN_SEQ_ZIGZAG};
    mattn_options opts = tc_options(&p);
    mattn_ring_options ro = mattn_ring_options_default();
    mattn_ring_stats a, b;
    assert_int_equal(mattn_ring_forward_ex(m, &shape, &tq, &tk, &tk, &to, NULL, &opts, &ro, &a),
                     MATTN_OK);
    ro.skip_comm = 1;
    assert_int_equal(mattn_ring_forward_ex(m, &shape, &tq, &tk, &tk, &to, NULL, &opts, &ro, &b),
                     MATTN_OK);
    assert_int_equal(a.steps, b.steps);
    assert_int_equal(a.kernel_calls, b.kernel_calls);
    assert_int_equal(b.messages_sent, 0);
    assert_int_equal(b.messages_received, 0);
    assert_int_equal(a.messages_received, sp > 1 && s.nb > 0 && s.nhq > 0 ? sp - 1 : 0);
    free(q), free(k), free(o);
    sh_shard_free(&s);
    tc_free(&p);
}

static void test_forward_basic_call(void **state)
{
    (void)state;
    /* mattn_ring_forward (defaults) and mattn_mesh_forward(MATTN_OP_RING). */
    tc_problem p = tc_seeded(33, 1, 40, 40, 2, 1, 8, 8);
    p.causal = 1;
    ref r = ref_make(&p);
    mattn_mesh *m = meshes[0];
    int dp, tp, sp;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    sh_shard s = sh_shard_make(&p, dp, tp, sp, mattn_mesh_rank(m), MATTN_SEQ_CONTIGUOUS);
    float *q = tl_alloc(sizeof(float) * (size_t)(s.nb * s.T * s.nhq * 8 + 1));
    float *k = tl_alloc(sizeof(float) * (size_t)(s.nb * s.S * s.nhk * 8 + 1));
    float *v = tl_alloc(sizeof(float) * (size_t)(s.nb * s.S * s.nhk * 8 + 1));
    float *o1 = tl_alloc(sizeof(float) * (size_t)(s.nb * s.T * s.nhq * 8 + 1));
    float *o2 = tl_alloc(sizeof(float) * (size_t)(s.nb * s.T * s.nhq * 8 + 1));
    mattn_tensor tq = mattn_tensor_bthd(q, s.nb, s.T, s.nhq, 8);
    mattn_tensor tk = mattn_tensor_bthd(k, s.nb, s.S, s.nhk, 8);
    mattn_tensor tv = mattn_tensor_bthd(v, s.nb, s.S, s.nhk, 8);
    sh_take(p.q, p.T, p.Hq, 8, &tq, s.b0, s.trow, s.hq0);
    sh_take(p.k, p.S, p.Hkv, 8, &tk, s.b0, s.srow, s.hk0);
    sh_take(p.v, p.S, p.Hkv, 8, &tv, s.b0, s.srow, s.hk0);
    mattn_tensor t1 = mattn_tensor_bthd(o1, s.nb, s.T, s.nhq, 8);
    mattn_tensor t2 = mattn_tensor_bthd(o2, s.nb, s.T, s.nhq, 8);
    mattn_dist_shape shape = {1, 40, 40, 2, 1, MATTN_SEQ_CONTIGUOUS};
    mattn_options opts = tc_options(&p);
    assert_int_equal(mattn_ring_forward(m, &shape, &tq, &tk, &tv, &t1, NULL, &opts), MATTN_OK);
    mattn_kernel chosen = MATTN_KERNEL_VANILLA;
    assert_int_equal(mattn_mesh_forward(m, &shape, MATTN_OP_RING, &tq, &tk, &tv, &t2, NULL,
                                        &opts, NULL, &chosen),
                     MATTN_OK);
    assert_int_equal(chosen, MATTN_KERNEL_FLASH);
    assert_memory_equal(o1, o2, sizeof(float) * (size_t)(s.nb * s.T * s.nhq * 8));
    for (int64_t t = 0; t < s.T; t++)
        for (int64_t h = 0; h < s.nhq; h++)
            for (int d = 0; d < 8; d++) {
                int64_t row = s.trow[t] * p.Hq + s.hq0 + h;
                tl_assert_close(o1[(t * s.nhq + h) * 8 + d], r.o[row * 8 + d], r.tol_o[row],
                                "basic ring o[t=%lld, h=%lld, d=%d]", (long long)s.trow[t],
                                (long long)(s.hq0 + h), d);
            }
    free(q), free(k), free(v), free(o1), free(o2);
    sh_shard_free(&s);
    ref_free(&r);
    tc_free(&p);
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tl_watchdog("test_ring: TIMEOUT (a collective call hung)\n", 240);
    n_meshes = sh_meshes_create(meshes, MAX_MESHES);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_causal_gqa),
        cmocka_unit_test(test_cross_lengths_offsets),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_chunk),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_mask_bias),
        cmocka_unit_test(test_sinks),
        cmocka_unit_test(test_softcap_dropout),
        cmocka_unit_test(test_mqa_and_empty_head_shards),
        cmocka_unit_test(test_tiny_and_empty_shards),
        cmocka_unit_test(test_pieces_and_threads),
        cmocka_unit_test(test_everything_at_once),
        cmocka_unit_test(test_random_combinations),
        cmocka_unit_test(test_schedule_causal),
        cmocka_unit_test(test_schedule_window),
        cmocka_unit_test(test_skip_comm_same_work),
        cmocka_unit_test(test_forward_basic_call),
    };
    int failed = tl_run_all("ring", tests, sizeof tests / sizeof tests[0]);
    sh_meshes_free(meshes, n_meshes);
    MPI_Finalize();
    return failed ? 1 : 0;
}
