/* Splash under the mesh's batch/head partitioning: mattn_mesh_forward with
 * MATTN_OP_SPLASH (mask from the options) and mattn_mesh_splash_forward with
 * explicit mask objects (per-head masks sliced to each rank's global q
 * heads), on every dp x tp mesh (sp = 1) of the job. Each rank slices its
 * batch entries and kv-head groups of a global problem (the test's own
 * slicing); its rows must equal, bit for bit, the rows of single-rank splash
 * on the whole problem (the same arithmetic), and match the float64
 * reference. Plus the errors every rank must return alike: sp > 1, a
 * per-head mask of the wrong head count, ranks disagreeing on the mask.
 * Collective. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/testlib.h"
#include "test_splash_masks.h"

static void split(int64_t n, int parts, int i, int64_t *start, int64_t *count)
{
    *count = n / parts + (i < n % parts ? 1 : 0);
    *start = i * (n / parts) + (i < n % parts ? i : n % parts);
}

/* The whole problem through single-rank splash (mask t, or NULL: from the
 * options). */
static void single_rank(const tc_problem *p, const tm *t, float *o, float *lse)
{
    mattn_tensor q = mattn_tensor_bthd(p->q, p->B, p->T, p->Hq, p->D);
    mattn_tensor k = mattn_tensor_bthd(p->k, p->B, p->S, p->Hkv, p->D);
    mattn_tensor v = mattn_tensor_bthd(p->v, p->B, p->S, p->Hkv, p->Dv);
    mattn_tensor to = mattn_tensor_bthd(o, p->B, p->T, p->Hq, p->Dv);
    mattn_options opts = tc_options(p);
    mattn_splash_mask *m = t ? tm_build(t) : NULL;
    assert_int_equal(mattn_splash_forward(&q, &k, &v, &to, lse, m, &opts), MATTN_OK);
    mattn_splash_mask_free(m);
}

/* This rank's shard of p on mesh m. */
typedef struct shard {
    int64_t b0, nb, hk0, nhk, h0, nh;
    float *q, *k, *v, *o, *lse;
    int32_t *qs, *ks;
    mattn_tensor tq, tk, tv, to;
    mattn_options opts;
    mattn_dist_shape shape;
} shard;

static void shard_make(const tc_problem *p, mattn_mesh *m, shard *s)
{
    int dp, tp, sp, dpr, tpr, spr;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    mattn_mesh_coords(m, &dpr, &tpr, &spr);
    int64_t G = p->Hq / p->Hkv, T = p->T, S = p->S, D = p->D, Dv = p->Dv;
    memset(s, 0, sizeof *s);
    split(p->B, dp, dpr, &s->b0, &s->nb);
    split(p->Hkv, tp, tpr, &s->hk0, &s->nhk);
    s->h0 = s->hk0 * G, s->nh = s->nhk * G;
    int64_t nb = s->nb, nh = s->nh, nhk = s->nhk;
    s->q = tl_alloc(sizeof(float) * (size_t)(nb * T * nh * D + 1));
    s->k = tl_alloc(sizeof(float) * (size_t)(nb * S * nhk * D + 1));
    s->v = tl_alloc(sizeof(float) * (size_t)(nb * S * nhk * Dv + 1));
    s->o = tl_alloc(sizeof(float) * (size_t)(nb * T * nh * Dv + 1));
    s->lse = tl_alloc(sizeof(float) * (size_t)(nb * nh * T + 1));
    for (int64_t b = 0; b < nb; b++) {
        for (int64_t t = 0; t < T; t++)
            memcpy(s->q + (b * T + t) * nh * D, p->q + (((s->b0 + b) * T + t) * p->Hq + s->h0) * D,
                   sizeof(float) * (size_t)(nh * D));
        for (int64_t j = 0; j < S; j++) {
            memcpy(s->k + (b * S + j) * nhk * D,
                   p->k + (((s->b0 + b) * S + j) * p->Hkv + s->hk0) * D,
                   sizeof(float) * (size_t)(nhk * D));
            memcpy(s->v + (b * S + j) * nhk * Dv,
                   p->v + (((s->b0 + b) * S + j) * p->Hkv + s->hk0) * Dv,
                   sizeof(float) * (size_t)(nhk * Dv));
        }
    }
    for (int64_t x = 0; x < nb * T * nh * Dv; x++)
        s->o[x] = NAN;
    for (int64_t x = 0; x < nb * nh * T; x++)
        s->lse[x] = NAN;
    s->opts = tc_options(p); /* global sinks, mask, bias */
    if (p->q_seg) {
        s->qs = tl_alloc(sizeof(int32_t) * (size_t)(nb * T + 1));
        s->ks = tl_alloc(sizeof(int32_t) * (size_t)(nb * S + 1));
        memcpy(s->qs, p->q_seg + s->b0 * T, sizeof(int32_t) * (size_t)(nb * T));
        memcpy(s->ks, p->kv_seg + s->b0 * S, sizeof(int32_t) * (size_t)(nb * S));
        s->opts.q_segment_ids = s->qs, s->opts.kv_segment_ids = s->ks;
    }
    s->shape = (mattn_dist_shape){p->B, T, S, p->Hq, p->Hkv, MATTN_SEQ_CONTIGUOUS};
    s->tq = mattn_tensor_bthd(s->q, nb, T, nh, D);
    s->tk = mattn_tensor_bthd(s->k, nb, S, nhk, D);
    s->tv = mattn_tensor_bthd(s->v, nb, S, nhk, Dv);
    s->to = mattn_tensor_bthd(s->o, nb, T, nh, Dv);
}

static void shard_free(shard *s)
{
    free(s->q), free(s->k), free(s->v), free(s->o), free(s->lse), free(s->qs), free(s->ks);
}

/* One mesh, one mask (t NULL: from the options; via_op: through
 * mattn_mesh_forward): run, compare with single-rank rows and the reference. */
static void check_one(const tc_problem *p, mattn_mesh *m, const tm *t, int via_op,
                      const char *what)
{
    shard s;
    shard_make(p, m, &s);
    int rc;
    if (via_op) {
        mattn_kernel chosen = (mattn_kernel)-1;
        rc = mattn_mesh_forward(m, &s.shape, MATTN_OP_SPLASH, &s.tq, &s.tk, &s.tv, &s.to, s.lse,
                                &s.opts, NULL, &chosen);
        if (rc == MATTN_OK)
            assert_int_equal(chosen, MATTN_KERNEL_SPLASH);
    } else {
        mattn_splash_mask *mask = t ? tm_build(t) : NULL;
        rc = mattn_mesh_splash_forward(m, &s.shape, &s.tq, &s.tk, &s.tv, &s.to, s.lse, mask,
                                       &s.opts);
        mattn_splash_mask_free(mask);
    }
    if (rc != MATTN_OK)
        fail_msg("%s: mesh splash failed: %s", what, mattn_last_error());

    const int64_t T = p->T, Dv = p->Dv, Hq = p->Hq;
    tc_problem ref = tm_reference_of(p, t ? t : tm_full());
    size_t nrow = (size_t)(p->B * T * Hq), nl = (size_t)(p->B * Hq * T);
    double *ro = tl_alloc(sizeof(double) * (nrow * (size_t)Dv + 1));
    double *rl = tl_alloc(sizeof(double) * (nl + 1));
    double *tol_o = tl_alloc(sizeof(double) * (nrow + 1)), *tol_l = tl_alloc(sizeof(double) * (nl + 1));
    tc_reference(&ref, ro, rl, NULL, tol_o, tol_l, NULL);
    float *go = tl_alloc(sizeof(float) * (nrow * (size_t)Dv + 1));
    float *gl = tl_alloc(sizeof(float) * (nl + 1));
    single_rank(p, t, go, gl);
    int dp, tp, sp;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    for (int64_t b = 0; b < s.nb; b++)
        for (int64_t tt = 0; tt < T; tt++)
            for (int64_t h = 0; h < s.nh; h++) {
                int64_t row = ((s.b0 + b) * T + tt) * Hq + s.h0 + h;
                const float *got = s.o + ((b * T + tt) * s.nh + h) * Dv;
                for (int64_t d = 0; d < Dv; d++) {
                    if (memcmp(&got[d], &go[row * Dv + d], sizeof(float)) != 0)
                        fail_msg("%s on %dx%d, rank %d: o[b=%lld, t=%lld, h=%lld, d=%lld] = "
                                 "%.9g but single-rank gives %.9g", what, dp, tp, tl_rank(),
                                 (long long)(s.b0 + b), (long long)tt, (long long)(s.h0 + h),
                                 (long long)d, got[d], go[row * Dv + d]);
                    if (!(fabs(got[d] - ro[row * Dv + d]) <= tol_o[row]))
                        fail_msg("%s: o[b=%lld, t=%lld, h=%lld] = %.9g, reference %.9g", what,
                                 (long long)(s.b0 + b), (long long)tt, (long long)(s.h0 + h),
                                 got[d], ro[row * Dv + d]);
                }
                int64_t li = ((s.b0 + b) * Hq + s.h0 + h) * T + tt;
                float l = s.lse[(b * s.nh + h) * T + tt];
                if (memcmp(&l, &gl[li], sizeof l) != 0)
                    fail_msg("%s: lse[b=%lld, h=%lld, t=%lld] = %.9g but single-rank %.9g", what,
                             (long long)(s.b0 + b), (long long)(s.h0 + h), (long long)tt, l,
                             gl[li]);
                int ok = rl[li] == -INFINITY ? l == -INFINITY : fabs(l - rl[li]) <= tol_l[li];
                if (!ok)
                    fail_msg("%s: lse %.9g, reference %.9g", what, l, rl[li]);
            }
    free(ref.mask), free(ro), free(rl), free(tol_o), free(tol_l), free(go), free(gl);
    shard_free(&s);
}

/* Every sp = 1 mesh of the job. */
static void check_all(const tc_problem *p, const tm *t, int via_op, const char *what)
{
    int size = tl_size();
    for (int tp = 1; tp <= size; tp++) {
        if (size % tp)
            continue;
        mattn_mesh *m;
        assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, size / tp, tp, 1, &m), MATTN_OK);
        check_one(p, m, t, via_op, what);
        mattn_mesh_free(m);
    }
}

static tc_problem base(uint64_t seed, int64_t B, int64_t T, int64_t S, int64_t Hq,
                       int64_t Hkv, int64_t D, int64_t Dv)
{
    tl_rng r = tl_rng_make(seed);
    return tc_make(&r, B, T, S, Hq, Hkv, D, Dv, 1.0);
}

/* mattn_mesh_forward(MATTN_OP_SPLASH): the mask from the options. */
static void test_op_splash(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(1);
    tc_problem p = tc_make(&r, 5, 37, 45, 8, 4, 16, 12, 1.0); /* B, Hkv uneven over 2, 3 */
    p.causal = 1, p.q_offset = 8;
    check_all(&p, NULL, 1, "op splash causal");
    p.causal = 0, p.window_left = 9, p.window_right = 2, p.chunk = 20;
    p.sinks = tl_alloc(sizeof(float) * 8);
    tl_fill(&r, p.sinks, 8, 2.0);
    p.softcap = 6.0;
    p.dropout_p = 0.2f, p.seed = 31, p.drop_b0 = 2, p.drop_h0 = 1;
    check_all(&p, NULL, 1, "op splash window, chunk, sinks, cap, dropout");
    /* A global boolean mask per head (sliced per rank) and bias, segments. */
    p.window_left = p.window_right = -1, p.chunk = 0, p.causal = 1;
    p.mask_b = 1, p.mask_h = 8;
    p.mask = tm_random_bits(&r, 8 * 37 * 45, 0.7);
    p.bias_b = 5, p.bias_h = 1;
    p.bias = tl_alloc(sizeof(float) * 5 * 37 * 45);
    tl_fill(&r, p.bias, 5 * 37 * 45, 1.0);
    p.q_seg = tl_alloc(sizeof(int32_t) * 5 * 37);
    p.kv_seg = tl_alloc(sizeof(int32_t) * 5 * 45);
    for (int64_t x = 0; x < 5 * 37; x++)
        p.q_seg[x] = (int32_t)tl_int(&r, 3) - 1;
    for (int64_t x = 0; x < 5 * 45; x++)
        p.kv_seg[x] = (int32_t)tl_int(&r, 3) - 1;
    check_all(&p, NULL, 1, "op splash per-head mask, bias, segments");
    check_all(&p, NULL, 0, "mesh_splash_forward mask NULL");
    tc_free(&p);
    tm_free_all();
}

/* mattn_mesh_splash_forward with mask objects, per-head ones sliced. */
static void test_mask_objects(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(2);
    tc_problem p = tc_make(&r, 3, 50, 50, 8, 4, 8, 8, 1.0);
    uint8_t *bits = tm_random_bits(&r, 50 * 50, 0.5);
    check_all(&p, tm_pair(TM_AND, tm_causal(0), tm_local(12, 0)), 0, "causal & local");
    check_all(&p, tm_pair(TM_OR, tm_chunked(16), tm_dense(bits, 50, 50, 0, 0)), 0,
              "chunked | dense");
    tm *heads[8];
    for (int h = 0; h < 8; h++)
        heads[h] = h % 3 == 0 ? tm_causal(-h) : h % 3 == 1 ? tm_local(h, 2) : tm_dense(bits, 50, 50, 0, 0);
    check_all(&p, tm_per_head(heads, 8), 0, "per-head");
    p.causal = 1; /* AND the options */
    check_all(&p, tm_pair(TM_AND, tm_per_head(heads, 8), tm_local(20, 20)), 0,
              "per-head & local & opts causal");
    tc_free(&p);
    /* MQA, B = 1: ranks with nothing to do. */
    p = base(3, 1, 40, 40, 4, 1, 8, 8);
    tm *mq[4] = {tm_causal(0), tm_full(), tm_chunked(7), tm_local(3, 0)};
    check_all(&p, tm_per_head(mq, 4), 0, "MQA per-head, empty shards");
    free(bits);
    tc_free(&p);
    tm_free_all();
}

/* Errors: the same status on every rank, with a message. */
static void expect_everywhere(int rc, int code, const char *what)
{
    int lo, hi;
    MPI_Allreduce(&rc, &lo, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&rc, &hi, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rc != code || lo != hi)
        fail_msg("%s: rank %d returned %d (%s), expected %d everywhere", what, tl_rank(), rc,
                 mattn_err_name(rc), code);
    assert_true(strlen(mattn_last_error()) > 0);
}

static void test_errors(void **state)
{
    (void)state;
    int size = tl_size();
    tc_problem p = base(4, 2, 16, 16, 4, 2, 8, 8);
    mattn_mesh *m;
    mattn_splash_mask *causal, *ph;
    assert_int_equal(mattn_splash_mask_causal(0, &causal), MATTN_OK);
    mattn_splash_mask *three[3] = {causal, causal, causal};
    assert_int_equal(mattn_splash_mask_per_head(three, 3, &ph), MATTN_OK);
    if (size > 1) { /* sp > 1: the ring is the sequence-parallel path */
        assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, &m), MATTN_OK);
        int64_t t0, tn, s0, sn;
        split(16, size, tl_rank(), &t0, &tn);
        split(16, size, tl_rank(), &s0, &sn);
        float *o = tl_alloc(sizeof(float) * 2 * 16 * 4 * 8);
        mattn_tensor q = mattn_tensor_bthd(p.q, 2, tn, 4, 8), k = mattn_tensor_bthd(p.k, 2, sn, 2, 8);
        mattn_tensor v = mattn_tensor_bthd(p.v, 2, sn, 2, 8), to = mattn_tensor_bthd(o, 2, tn, 4, 8);
        q.stride_batch = 16 * 4 * 8, k.stride_batch = v.stride_batch = 16 * 2 * 8;
        mattn_dist_shape shape = {2, 16, 16, 4, 2, MATTN_SEQ_CONTIGUOUS};
        mattn_options opts = mattn_options_default();
        expect_everywhere(mattn_mesh_splash_forward(m, &shape, &q, &k, &v, &to, NULL, causal,
                                                    &opts),
                          MATTN_ERR_UNSUPPORTED, "sp > 1");
        expect_everywhere(mattn_mesh_forward(m, &shape, MATTN_OP_SPLASH, &q, &k, &v, &to, NULL,
                                             &opts, NULL, NULL),
                          MATTN_ERR_UNSUPPORTED, "op splash, sp > 1");
        free(o);
        mattn_mesh_free(m);
    }
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, size, 1, 1, &m), MATTN_OK);
    shard s;
    shard_make(&p, m, &s);
    expect_everywhere(mattn_mesh_splash_forward(m, &s.shape, &s.tq, &s.tk, &s.tv, &s.to, s.lse,
                                                ph, &s.opts),
                      MATTN_ERR_SHAPE, "3-head mask, 4 q heads");
    if (size > 1) /* one rank passes no mask object */
        expect_everywhere(mattn_mesh_splash_forward(m, &s.shape, &s.tq, &s.tk, &s.tv, &s.to,
                                                    s.lse, tl_rank() == size - 1 ? NULL : causal,
                                                    &s.opts),
                          MATTN_ERR_ARG, "mask on some ranks only");
    shard_free(&s);
    mattn_mesh_free(m);
    mattn_splash_mask_free(causal);
    mattn_splash_mask_free(ph);
    tc_free(&p);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_splash_mesh: TIMEOUT\n";
    if (write(2, msg, sizeof msg - 1) < 0)
        _exit(3);
    _exit(3);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    signal(SIGALRM, on_alarm);
    const char *limit = getenv("TEST_ALARM");
    alarm(limit ? (unsigned)atoi(limit) : 120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_splash),
        cmocka_unit_test(test_mask_objects),
        cmocka_unit_test(test_errors),
    };
    int failed = tl_run_all("splash_mesh", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
