/* shard_map-style partitioning (issue #3 item 2): vanilla, flash and sdpa
 * through mattn_mesh_forward on every dp x tp mesh (sp = 1) of the job.
 * Each rank takes its batch entries and kv-head groups of a global problem
 * (the test's own slicing), and its rows must equal, bit for bit, the rows
 * of the same operator run single-rank on the whole problem (a shard's rows
 * go through exactly the same arithmetic), and match the float64 reference.
 * Sinks, mask and bias are passed global; segment ids as the local shard.
 * Collective. */
#include <stdlib.h>

#include "common/cases.h"
#include "common/shards.h"

static const mattn_op OPS[] = {MATTN_OP_VANILLA, MATTN_OP_FLASH, MATTN_OP_SDPA};

/* The whole problem through the single-rank operator. */
static void single_rank(const tc_problem *p, mattn_op op, float *o, float *lse)
{
    mattn_tensor q = mattn_tensor_bthd(p->q, p->B, p->T, p->Hq, p->D);
    mattn_tensor k = mattn_tensor_bthd(p->k, p->B, p->S, p->Hkv, p->D);
    mattn_tensor v = mattn_tensor_bthd(p->v, p->B, p->S, p->Hkv, p->Dv);
    mattn_tensor to = mattn_tensor_bthd(o, p->B, p->T, p->Hq, p->Dv);
    mattn_options opts = tc_options(p);
    int rc = op == MATTN_OP_VANILLA ? mattn_vanilla_forward(&q, &k, &v, &to, lse, NULL, &opts)
             : op == MATTN_OP_FLASH ? mattn_flash_forward(&q, &k, &v, &to, lse, &opts)
                                    : mattn_sdpa_forward(&q, &k, &v, &to, lse, &opts, NULL);
    assert_int_equal(rc, MATTN_OK);
}

/* One operator on one mesh: slice, run, compare with the single-rank rows
 * (exactly) and with the reference (within the derived tolerance). */
static void check_one(const tc_problem *p, mattn_mesh *m, mattn_op op, const double *ro,
                      const double *rl, const double *tol_o, const double *tol_l)
{
    sh_local s;
    sh_local_make(p, m, &s);
    mattn_kernel chosen = (mattn_kernel)-1;
    assert_int_equal(mattn_mesh_forward(m, &s.shape, op, &s.tq, &s.tk, &s.tv, &s.to, s.lse,
                                        &s.opts, NULL, &chosen),
                     MATTN_OK);
    if (op == MATTN_OP_VANILLA)
        assert_int_equal(chosen, MATTN_KERNEL_VANILLA);
    if (op == MATTN_OP_FLASH)
        assert_int_equal(chosen, MATTN_KERNEL_FLASH);
    /* sdpa picks the same kernel on every rank */
    int c = (int)chosen, lo, hi;
    MPI_Allreduce(&c, &lo, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&c, &hi, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    assert_int_equal(lo, hi);

    float *go = tl_alloc(sizeof(float) * (size_t)(p->B * p->T * p->Hq * p->Dv + 1));
    float *gl = tl_alloc(sizeof(float) * (size_t)(p->B * p->Hq * p->T + 1));
    single_rank(p, op, go, gl);
    sh_local_check(mattn_op_name(op), p, &s, go, gl, ro, rl, tol_o, tol_l);
    free(go), free(gl);
    sh_local_free(&s);
}

/* Every operator on every sp = 1 mesh. */
static void check_all(const tc_problem *p)
{
    size_t nrow = (size_t)(p->B * p->T * p->Hq), nl = (size_t)(p->B * p->Hq * p->T);
    double *ro = tl_alloc(sizeof(double) * (nrow * (size_t)p->Dv + 1));
    double *rl = tl_alloc(sizeof(double) * (nl + 1));
    double *to = tl_alloc(sizeof(double) * (nrow + 1)), *tlse = tl_alloc(sizeof(double) * (nl + 1));
    tc_reference(p, ro, rl, NULL, to, tlse, NULL);
    int size = tl_size();
    for (int tp = 1; tp <= size; tp++) {
        if (size % tp)
            continue;
        mattn_mesh *m;
        assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, size / tp, tp, 1, &m), MATTN_OK);
        for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++)
            check_one(p, m, OPS[i], ro, rl, to, tlse);
        mattn_mesh_free(m);
    }
    free(ro), free(rl), free(to), free(tlse);
}

static void test_heads_and_batches(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(1, 5, 37, 45, 8, 4, 16, 12); /* B, Hkv uneven over 2, 3 */
    p.causal = 1, p.q_offset = 8;
    check_all(&p);
    tc_free(&p);
    p = tc_seeded(2, 1, 70, 70, 4, 1, 16, 16); /* MQA, B = 1: empty shards */
    check_all(&p);
    tc_free(&p);
}

static void test_options(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(3);
    tc_problem p = tc_make(&r, 4, 40, 52, 6, 3, 16, 16, 1.0);
    p.window_left = 9, p.window_right = 2, p.chunk = 20;
    tc_random_sinks(&r, &p, 2.0);
    p.softcap = 6.0;
    p.dropout_p = 0.2f, p.seed = 31, p.drop_b0 = 2, p.drop_h0 = 1;
    check_all(&p);
    tc_free(&p);
}

static void test_global_mask_bias_segments(void **state)
{
    (void)state;
    static const int64_t dims[][2] = {{1, 1}, {3, 1}, {1, 4}, {3, 4}};
    for (size_t c = 0; c < 4; c++) {
        tl_rng r = tl_rng_make(4 + c);
        tc_problem p = tc_make(&r, 3, 33, 41, 4, 2, 8, 8, 1.0);
        tc_random_mask(&r, &p, dims[c][0], dims[c][1], 4);
        tc_random_bias(&r, &p, dims[3 - c][0], dims[3 - c][1], 2.0);
        tc_random_segment_ids(&r, &p, 3);
        check_all(&p);
        tc_free(&p);
    }
}

static void test_sdpa_small_and_large(void **state)
{
    (void)state;
    /* sdpa's choice (vanilla for small, flash for large) is made alike on
     * every rank, including those without heads. */
    tc_problem p = tc_seeded(9, 2, 8, 8, 2, 1, 8, 8);
    check_all(&p);
    tc_free(&p);
    p = tc_seeded(10, 2, 100, 100, 2, 1, 8, 8);
    p.causal = 1;
    check_all(&p);
    tc_free(&p);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tl_watchdog("test_partition: TIMEOUT\n", 120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heads_and_batches),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_global_mask_bias_segments),
        cmocka_unit_test(test_sdpa_small_and_large),
    };
    int failed = tl_run_all("partition", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
