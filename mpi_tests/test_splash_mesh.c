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
#include <stdlib.h>
#include <string.h>

#include "common/cases.h"
#include "common/shards.h"
#include "test_splash_masks.h"

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

/* One mesh, one mask (t NULL: from the options; via_op: through
 * mattn_mesh_forward): run, compare with single-rank rows and the reference. */
static void check_one(const tc_problem *p, mattn_mesh *m, const tm *t, int via_op,
                      const char *what)
{
    sh_local s;
    sh_local_make(p, m, &s);
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
    sh_local_check(what, p, &s, go, gl, ro, rl, tol_o, tol_l);
    free(ref.mask), free(ro), free(rl), free(tol_o), free(tol_l), free(go), free(gl);
    sh_local_free(&s);
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

/* mattn_mesh_forward(MATTN_OP_SPLASH): the mask from the options. */
static void test_op_splash(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(1);
    tc_problem p = tc_make(&r, 5, 37, 45, 8, 4, 16, 12, 1.0); /* B, Hkv uneven over 2, 3 */
    p.causal = 1, p.q_offset = 8;
    check_all(&p, NULL, 1, "op splash causal");
    p.causal = 0, p.window_left = 9, p.window_right = 2, p.chunk = 20;
    tc_random_sinks(&r, &p, 2.0);
    p.softcap = 6.0;
    p.dropout_p = 0.2f, p.seed = 31, p.drop_b0 = 2, p.drop_h0 = 1;
    check_all(&p, NULL, 1, "op splash window, chunk, sinks, cap, dropout");
    /* A global boolean mask per head (sliced per rank) and bias, segments. */
    p.window_left = p.window_right = -1, p.chunk = 0, p.causal = 1;
    p.mask_b = 1, p.mask_h = 8;
    p.mask = tm_random_bits(&r, 8 * 37 * 45, 0.7);
    tc_random_bias(&r, &p, 5, 1, 1.0);
    tc_random_segment_ids(&r, &p, 3);
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
    p = tc_seeded(3, 1, 40, 40, 4, 1, 8, 8);
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
    tc_problem p = tc_seeded(4, 2, 16, 16, 4, 2, 8, 8);
    mattn_mesh *m;
    mattn_splash_mask *causal, *ph;
    assert_int_equal(mattn_splash_mask_causal(0, &causal), MATTN_OK);
    mattn_splash_mask *three[3] = {causal, causal, causal};
    assert_int_equal(mattn_splash_mask_per_head(three, 3, &ph), MATTN_OK);
    if (size > 1) { /* sp > 1: the ring is the sequence-parallel path */
        assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, &m), MATTN_OK);
        int64_t t0, tn, s0, sn;
        sh_split(16, size, tl_rank(), &t0, &tn);
        sh_split(16, size, tl_rank(), &s0, &sn);
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
    sh_local s;
    sh_local_make(&p, m, &s);
    expect_everywhere(mattn_mesh_splash_forward(m, &s.shape, &s.tq, &s.tk, &s.tv, &s.to, s.lse,
                                                ph, &s.opts),
                      MATTN_ERR_SHAPE, "3-head mask, 4 q heads");
    if (size > 1) /* one rank passes no mask object */
        expect_everywhere(mattn_mesh_splash_forward(m, &s.shape, &s.tq, &s.tk, &s.tv, &s.to,
                                                    s.lse, tl_rank() == size - 1 ? NULL : causal,
                                                    &s.opts),
                          MATTN_ERR_ARG, "mask on some ranks only");
    if (size > 1) { /* one rank passes another mask, or another dense byte */
        mattn_splash_mask *local, *dense;
        assert_int_equal(mattn_splash_mask_local(3, 0, &local), MATTN_OK);
        uint8_t bits[16 * 16];
        for (int i = 0; i < 16 * 16; i++)
            bits[i] = (uint8_t)(i % 5 != 0 || (tl_rank() == size - 1 && i == 255));
        assert_int_equal(mattn_splash_mask_dense(bits, 16, 16, &dense), MATTN_OK);
        expect_everywhere(mattn_mesh_splash_forward(m, &s.shape, &s.tq, &s.tk, &s.tv, &s.to,
                                                    s.lse, tl_rank() == 0 ? local : causal,
                                                    &s.opts),
                          MATTN_ERR_ARG, "another mask on rank 0");
        assert_non_null(strstr(mattn_last_error(), "same mask"));
        expect_everywhere(mattn_mesh_splash_forward(m, &s.shape, &s.tq, &s.tk, &s.tv, &s.to,
                                                    s.lse, dense, &s.opts),
                          MATTN_ERR_ARG, "one dense byte differs on the last rank");
        assert_non_null(strstr(mattn_last_error(), "same mask"));
        bits[255] = 0;
        assert_int_equal(mattn_mesh_splash_forward(m, &s.shape, &s.tq, &s.tk, &s.tv, &s.to,
                                                   s.lse, dense, &s.opts),
                         MATTN_OK);
        mattn_splash_mask_free(local);
        mattn_splash_mask_free(dense);
    }
    sh_local_free(&s);
    mattn_mesh_free(m);
    mattn_splash_mask_free(causal);
    mattn_splash_mask_free(ph);
    tc_free(&p);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tl_watchdog("test_splash_mesh: TIMEOUT\n", 120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_splash),
        cmocka_unit_test(test_mask_objects),
        cmocka_unit_test(test_errors),
    };
    int failed = tl_run_all("splash_mesh", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
