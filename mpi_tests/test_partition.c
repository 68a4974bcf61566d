/* shard_map-style partitioning (issue #3 item 2): vanilla, flash and sdpa
 * through mattn_mesh_forward on every dp x tp mesh (sp = 1) of the job.
 * Each rank takes its batch entries and kv-head groups of a global problem
 * (the test's own slicing), and its rows must equal, bit for bit, the rows
 * of the same operator run single-rank on the whole problem (a shard's rows
 * go through exactly the same arithmetic), and match the float64 reference.
 * Sinks, mask and bias are passed global; segment ids as the local shard.
 * Collective. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/testlib.h"

static const mattn_op OPS[] = {MATTN_OP_VANILLA, MATTN_OP_FLASH, MATTN_OP_SDPA};

static void split(int64_t n, int parts, int i, int64_t *start, int64_t *count)
{
    *count = n / parts + (i < n % parts ? 1 : 0);
    *start = i * (n / parts) + (i < n % parts ? i : n % parts);
}

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
    int dp, tp, sp, dpr, tpr, spr;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    mattn_mesh_coords(m, &dpr, &tpr, &spr);
    int64_t b0, nb, hk0, nhk, G = p->Hq / p->Hkv;
    split(p->B, dp, dpr, &b0, &nb);
    split(p->Hkv, tp, tpr, &hk0, &nhk);
    int64_t h0 = hk0 * G, nh = nhk * G, T = p->T, S = p->S, D = p->D, Dv = p->Dv;

    float *q = tl_alloc(sizeof(float) * (size_t)(nb * T * nh * D + 1));
    float *k = tl_alloc(sizeof(float) * (size_t)(nb * S * nhk * D + 1));
    float *v = tl_alloc(sizeof(float) * (size_t)(nb * S * nhk * Dv + 1));
    float *o = tl_alloc(sizeof(float) * (size_t)(nb * T * nh * Dv + 1));
    float *lse = tl_alloc(sizeof(float) * (size_t)(nb * nh * T + 1));
    int32_t *qs = NULL, *ks = NULL;
    for (int64_t b = 0; b < nb; b++) {
        for (int64_t t = 0; t < T; t++)
            memcpy(q + (b * T + t) * nh * D, p->q + (((b0 + b) * T + t) * p->Hq + h0) * D,
                   sizeof(float) * (size_t)(nh * D));
        for (int64_t j = 0; j < S; j++) {
            memcpy(k + (b * S + j) * nhk * D, p->k + (((b0 + b) * S + j) * p->Hkv + hk0) * D,
                   sizeof(float) * (size_t)(nhk * D));
            memcpy(v + (b * S + j) * nhk * Dv, p->v + (((b0 + b) * S + j) * p->Hkv + hk0) * Dv,
                   sizeof(float) * (size_t)(nhk * Dv));
        }
    }
    for (int64_t x = 0; x < nb * T * nh * Dv; x++)
        o[x] = NAN;
    for (int64_t x = 0; x < nb * nh * T; x++)
        lse[x] = NAN;
    mattn_options opts = tc_options(p); /* global sinks, mask, bias */
    if (p->q_seg) {
        qs = tl_alloc(sizeof(int32_t) * (size_t)(nb * T + 1));
        ks = tl_alloc(sizeof(int32_t) * (size_t)(nb * S + 1));
        memcpy(qs, p->q_seg + b0 * T, sizeof(int32_t) * (size_t)(nb * T));
        memcpy(ks, p->kv_seg + b0 * S, sizeof(int32_t) * (size_t)(nb * S));
        opts.q_segment_ids = qs, opts.kv_segment_ids = ks;
    }
    mattn_dist_shape shape = {p->B, T, S, p->Hq, p->Hkv, MATTN_SEQ_CONTIGUOUS};
    mattn_tensor tq = mattn_tensor_bthd(q, nb, T, nh, D), tk = mattn_tensor_bthd(k, nb, S, nhk, D);
    mattn_tensor tv = mattn_tensor_bthd(v, nb, S, nhk, Dv);
    mattn_tensor to = mattn_tensor_bthd(o, nb, T, nh, Dv);
    mattn_kernel chosen = (mattn_kernel)-1;
    assert_int_equal(mattn_mesh_forward(m, &shape, op, &tq, &tk, &tv, &to, lse, &opts, NULL,
                                        &chosen),
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

    float *go = tl_alloc(sizeof(float) * (size_t)(p->B * T * p->Hq * Dv + 1));
    float *gl = tl_alloc(sizeof(float) * (size_t)(p->B * p->Hq * T + 1));
    single_rank(p, op, go, gl);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < nh; h++) {
                int64_t row = ((b0 + b) * T + t) * p->Hq + h0 + h;
                const float *got = o + ((b * T + t) * nh + h) * Dv;
                for (int64_t d = 0; d < Dv; d++) {
                    if (memcmp(&got[d], &go[row * Dv + d], sizeof(float)) != 0)
                        fail_msg("%s on %dx%d, rank %d: o[b=%lld, t=%lld, h=%lld, d=%lld] = "
                                 "%.9g but single-rank gives %.9g", mattn_op_name(op), dp, tp,
                                 tl_rank(), (long long)(b0 + b), (long long)t,
                                 (long long)(h0 + h), (long long)d, got[d], go[row * Dv + d]);
                    if (!(fabs(got[d] - ro[row * Dv + d]) <= tol_o[row]))
                        fail_msg("%s: o[b=%lld, t=%lld, h=%lld] = %.9g, reference %.9g",
                                 mattn_op_name(op), (long long)(b0 + b), (long long)t,
                                 (long long)(h0 + h), got[d], ro[row * Dv + d]);
                }
                int64_t li = ((b0 + b) * p->Hq + h0 + h) * T + t;
                float l = lse[(b * nh + h) * T + t];
                if (memcmp(&l, &gl[li], sizeof l) != 0)
                    fail_msg("%s: lse[b=%lld, h=%lld, t=%lld] = %.9g but single-rank %.9g",
                             mattn_op_name(op), (long long)(b0 + b), (long long)(h0 + h),
                             (long long)t, l, gl[li]);
                int ok = rl[li] == -INFINITY ? l == -INFINITY : fabs(l - rl[li]) <= tol_l[li];
                if (!ok)
                    fail_msg("%s: lse %.9g, reference %.9g", mattn_op_name(op), l, rl[li]);
            }
    free(q), free(k), free(v), free(o), free(lse), free(qs), free(ks), free(go), free(gl);
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

static tc_problem base(uint64_t seed, int64_t B, int64_t T, int64_t S, int64_t Hq,
                       int64_t Hkv, int64_t D, int64_t Dv)
{
    tl_rng r = tl_rng_make(seed);
    return tc_make(&r, B, T, S, Hq, Hkv, D, Dv, 1.0);
}

static void test_heads_and_batches(void **state)
{
    (void)state;
    tc_problem p = base(1, 5, 37, 45, 8, 4, 16, 12); /* B, Hkv uneven over 2, 3 */
    p.causal = 1, p.q_offset = 8;
    check_all(&p);
    tc_free(&p);
    p = base(2, 1, 70, 70, 4, 1, 16, 16); /* MQA, B = 1: empty shards */
    check_all(&p);
    tc_free(&p);
}

static void test_options(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(3);
    tc_problem p = tc_make(&r, 4, 40, 52, 6, 3, 16, 16, 1.0);
    p.window_left = 9, p.window_right = 2, p.chunk = 20;
    p.sinks = tl_alloc(sizeof(float) * 6);
    tl_fill(&r, p.sinks, 6, 2.0);
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
        p.mask_b = dims[c][0], p.mask_h = dims[c][1];
        p.bias_b = dims[3 - c][0], p.bias_h = dims[3 - c][1];
        int64_t nm = p.mask_b * p.mask_h * p.T * p.S, nb = p.bias_b * p.bias_h * p.T * p.S;
        p.mask = tl_alloc((size_t)nm);
        for (int64_t x = 0; x < nm; x++)
            p.mask[x] = (uint8_t)(tl_int(&r, 4) != 0);
        p.bias = tl_alloc(sizeof(float) * (size_t)nb);
        tl_fill(&r, p.bias, nb, 2.0);
        p.q_seg = tl_alloc(sizeof(int32_t) * 3 * 33);
        p.kv_seg = tl_alloc(sizeof(int32_t) * 3 * 41);
        for (int64_t x = 0; x < 3 * 33; x++)
            p.q_seg[x] = (int32_t)tl_int(&r, 3) - 1;
        for (int64_t x = 0; x < 3 * 41; x++)
            p.kv_seg[x] = (int32_t)tl_int(&r, 3) - 1;
        check_all(&p);
        tc_free(&p);
    }
}

static void test_sdpa_small_and_large(void **state)
{
    (void)state;
    /* sdpa's choice (vanilla for small, flash for large) is made alike on
     * every rank, including those without heads. */
    tc_problem p = base(9, 2, 8, 8, 2, 1, 8, 8);
    check_all(&p);
    tc_free(&p);
    p = base(10, 2, 100, 100, 2, 1, 8, 8);
    p.causal = 1;
    check_all(&p);
    tc_free(&p);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_partition: TIMEOUT\n";
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
        cmocka_unit_test(test_heads_and_batches),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_global_mask_bias_segments),
        cmocka_unit_test(test_sdpa_small_and_large),
    };
    int failed = tl_run_all("partition", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
