/* Bad input never hangs (issue #3 item 4): one rank passes a bad argument
 * (the last rank, then rank 0) and every rank must return the same status
 * with the same message, under a timeout, before any point-to-point
 * message; afterwards a good call on the same mesh still works (nothing was
 * left in flight). Covers the ring, the partitioned front door and the
 * scatter/gather helpers, and the global arrays (mask, bias, sinks) every
 * rank must pass alike, forward and backward. Collective. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/testlib.h"

enum { B = 1, T = 24, HQ = 2, HKV = 1, D = 8 };

/* One valid ring call on a mesh of sp = size ranks. */
typedef struct call {
    mattn_mesh *m;
    mattn_dist_shape shape;
    mattn_tensor q, k, v, o;
    float *lse;
    mattn_options opts;
    mattn_ring_options ro;
    mattn_op op;
    float *buf;
    uint8_t *mask; /* [HQ, T, T] of ones */
    float *bias;   /* [HQ, T, T] of zeros */
    float sinks[HQ];
    int32_t seg[T];
    /* backward: call_run runs mattn_mesh_backward with these */
    int backward;
    float *grad, *dbias;
    mattn_tensor dout, dq, dk, dv;
} call;

static void call_make(call *c, int dp, int sp)
{
    memset(c, 0, sizeof *c);
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, dp, 1, sp, &c->m), MATTN_OK);
    c->shape = (mattn_dist_shape){B * dp, T, T, HQ, HKV, MATTN_SEQ_ZIGZAG};
    mattn_shard sh;
    assert_int_equal(mattn_mesh_shard(c->m, &c->shape, mattn_mesh_rank(c->m), &sh), MATTN_OK);
    int64_t Tl = sh.q_len, Sl = sh.kv_len, Bl = sh.batch_count;
    size_t n = (size_t)(Bl * (2 * Tl * HQ + 2 * Sl * HKV) * D + Bl * HQ * Tl);
    c->buf = tl_alloc(sizeof(float) * (n + 1));
    tl_rng r = tl_rng_make(1);
    tl_fill(&r, c->buf, Bl * (2 * Tl * HQ + 2 * Sl * HKV) * D, 1.0);
    float *p = c->buf;
    c->q = mattn_tensor_bthd(p, Bl, Tl, HQ, D), p += Bl * Tl * HQ * D;
    c->k = mattn_tensor_bthd(p, Bl, Sl, HKV, D), p += Bl * Sl * HKV * D;
    c->v = mattn_tensor_bthd(p, Bl, Sl, HKV, D), p += Bl * Sl * HKV * D;
    c->o = mattn_tensor_bthd(p, Bl, Tl, HQ, D), p += Bl * Tl * HQ * D;
    c->lse = p;
    c->opts = mattn_options_default();
    c->opts.causal = 1;
    c->ro = mattn_ring_options_default();
    c->op = MATTN_OP_RING;
    c->mask = tl_alloc((size_t)(HQ * T * T));
    memset(c->mask, 1, (size_t)(HQ * T * T));
    c->bias = tl_alloc(sizeof(float) * HQ * T * T);
    memset(c->bias, 0, sizeof(float) * HQ * T * T);
    c->dbias = tl_alloc(sizeof(float) * HQ * T * T);
    c->grad = tl_alloc(sizeof(float) * (size_t)(Bl * (2 * Tl * HQ + 2 * Sl * HKV) * D + 1));
    p = c->grad;
    tl_fill(&r, p, Bl * Tl * HQ * D, 1.0);
    c->dout = mattn_tensor_bthd(p, Bl, Tl, HQ, D), p += Bl * Tl * HQ * D;
    c->dq = mattn_tensor_bthd(p, Bl, Tl, HQ, D), p += Bl * Tl * HQ * D;
    c->dk = mattn_tensor_bthd(p, Bl, Sl, HKV, D), p += Bl * Sl * HKV * D;
    c->dv = mattn_tensor_bthd(p, Bl, Sl, HKV, D);
    c->sinks[0] = 0.5f, c->sinks[1] = -1.0f;
    for (int i = 0; i < T; i++)
        c->seg[i] = i / 7;
}

static void call_free(call *c)
{
    mattn_mesh_free(c->m);
    free(c->buf);
    free(c->mask);
    free(c->bias);
    free(c->dbias);
    free(c->grad);
}

static int call_run(call *c)
{
    if (c->backward)
        return mattn_mesh_backward(c->m, &c->shape, c->op, &c->q, &c->k, &c->v, &c->o, c->lse,
                                   &c->dout, &c->dq, &c->dk, &c->dv, NULL,
                                   c->opts.bias.data ? c->dbias : NULL, &c->opts, &c->ro);
    if (c->op == MATTN_OP_RING)
        return mattn_ring_forward_ex(c->m, &c->shape, &c->q, &c->k, &c->v, &c->o, c->lse,
                                     &c->opts, &c->ro, NULL);
    return mattn_mesh_forward(c->m, &c->shape, c->op, &c->q, &c->k, &c->v, &c->o, c->lse,
                              &c->opts, &c->ro, NULL);
}

/* The failing rank's own message; the others carry it as "rank N: ...". */
static const char *core_message(void)
{
    const char *m = mattn_last_error();
    if (strncmp(m, "rank ", 5) == 0) {
        const char *colon = strstr(m, ": ");
        if (colon)
            return colon + 2;
    }
    return m;
}

/* Same status and same message on every rank. */
static void assert_same_everywhere(int rc, int want, const char *want_text, const char *what)
{
    int mine[2] = {rc, -rc}, agg[2];
    MPI_Allreduce(mine, agg, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (agg[0] != -agg[1])
        fail_msg("%s: ranks returned different statuses (%d .. %d)", what, -agg[1], agg[0]);
    if (rc != want)
        fail_msg("%s: got %s (%s), want %s", what, mattn_err_name(rc), mattn_last_error(),
                 mattn_err_name(want));
    const char *msg = core_message();
    if (strstr(msg, want_text) == NULL)
        fail_msg("%s: message \"%s\" does not mention \"%s\"", what, msg, want_text);
    unsigned long h = 5381, lo, hi;
    for (const char *x = msg; *x; x++)
        h = h * 33 + (unsigned char)*x;
    MPI_Allreduce(&h, &lo, 1, MPI_UNSIGNED_LONG, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&h, &hi, 1, MPI_UNSIGNED_LONG, MPI_MAX, MPI_COMM_WORLD);
    if (lo != hi)
        fail_msg("%s: ranks report different messages (mine: \"%s\")", what, msg);
}

typedef void (*perturb_fn)(call *c);

/* base on every rank, then the perturbation on one rank only (the last,
 * then rank 0), then a good call on the same mesh. */
static void expect_on(perturb_fn base, perturb_fn f, int dp, int sp, int want,
                      const char *want_text, const char *what)
{
    int size = tl_size();
    /* A value that differs between ranks needs two ranks. */
    if (size == 1 && strstr(what, "different"))
        return;
    int culprits[2] = {size - 1, 0};
    for (int i = 0; i < (size > 1 ? 2 : 1); i++) {
        call c;
        call_make(&c, dp, sp);
        if (base)
            base(&c);
        if (tl_rank() == culprits[i])
            f(&c);
        char label[96];
        snprintf(label, sizeof label, "%s (bad on rank %d)", what, culprits[i]);
        assert_same_everywhere(call_run(&c), want, want_text, label);
        call_free(&c);
        call_make(&c, dp, sp);
        assert_int_equal(call_run(&c), MATTN_OK);
        call_free(&c);
    }
}

static void expect(perturb_fn f, int dp, int sp, int want, const char *want_text,
                   const char *what)
{
    expect_on(NULL, f, dp, sp, want, want_text, what);
}

static void null_q(call *c) { c->op = MATTN_OP_RING; c->q.data = NULL; }
static void short_q(call *c) { c->q.seq += 1; c->o.seq += 1; }
static void window(call *c) { c->opts.window_left = 3; }
static void nan_scale(call *c) { c->opts.scale = NAN; }
static void big_dropout(call *c) { c->opts.dropout_p = 1.5f; }
static void bad_mask(call *c) { c->opts.mask = mattn_mask_dense(c->mask, 1, 1, T - 1, T); }
static void bad_layout(call *c) { c->shape.layout = (mattn_seq_layout)7; }
static void bad_comm(call *c) { c->ro.comm = (mattn_ring_comm)9; }
static void other_comm(call *c) { c->ro.comm = MATTN_RING_COMM_SENDRECV; }
static void nan_sink(call *c) { c->sinks[1] = NAN; c->opts.sinks = c->sinks; }
static void half_segments(call *c) { c->opts.q_segment_ids = c->seg; }
static void other_batch(call *c) { c->shape.batch += 1; }
static void other_offset(call *c) { c->opts.q_offset = 5; }
static void bad_heads(call *c) { c->shape.q_heads = 3, c->shape.kv_heads = 2; }

/* Both sides of every check that would otherwise have ranks disagree on the
 * schedule: the mismatch is reported, not waited for. */
static void test_ring_bad_input_on_one_rank(void **state)
{
    (void)state;
    int size = tl_size();
    expect(null_q, 1, size, MATTN_ERR_ARG, "q", "q NULL");
    expect(short_q, 1, size, MATTN_ERR_SHAPE, "shard", "local q too long");
    expect(window, 1, size, MATTN_ERR_ARG, "window_left", "different window");
    expect(nan_scale, 1, size, MATTN_ERR_ARG, "scale", "NaN scale");
    expect(big_dropout, 1, size, MATTN_ERR_ARG, "dropout_p", "dropout 1.5");
    expect(bad_mask, 1, size, MATTN_ERR_SHAPE, "mask", "mask of the wrong shape");
    expect(bad_layout, 1, size, MATTN_ERR_ARG, "layout", "unknown layout");
    expect(bad_comm, 1, size, MATTN_ERR_ARG, "communication mode", "unknown comm mode");
    expect(other_comm, 1, size, MATTN_ERR_ARG, "ring comm mode", "different comm mode");
    expect(nan_sink, 1, size, MATTN_ERR_ARG, "sinks", "NaN sink");
    expect(half_segments, 1, size, MATTN_ERR_ARG, "segment", "q segment ids alone");
    expect(other_batch, 1, size, MATTN_ERR_SHAPE, "shard", "different global batch");
    expect(other_offset, 1, size, MATTN_ERR_ARG, "q_offset", "different q_offset");
    expect(bad_heads, 1, size, MATTN_ERR_SHAPE, "multiple", "q_heads not a multiple");
}

/* Global arrays (mask, bias, sinks) and their broadcast dims: the ring's
 * plan of who talks to whom comes from the mask, and the dbias reduction's
 * size from the bias dims, so one rank's different array used to leave the
 * others waiting. */
static void mask_11(call *c) { c->opts.mask = mattn_mask_dense(c->mask, 1, 1, T, T); }
static void mask_1h(call *c) { c->opts.mask = mattn_mask_dense(c->mask, 1, HQ, T, T); }
static void mask_none_allowed(call *c) { memset(c->mask, 0, (size_t)(HQ * T * T)); }
static void mask_one_byte(call *c) { c->mask[T * T - 1] = 0; }
static void bias_11(call *c) { c->opts.bias = mattn_bias_dense(c->bias, 1, 1, T, T); }
static void bias_1h(call *c) { c->opts.bias = mattn_bias_dense(c->bias, 1, HQ, T, T); }
static void bias_value(call *c) { c->bias[3] = 0.5f; }
static void with_sinks(call *c) { c->opts.sinks = c->sinks; }
static void sink_value(call *c) { c->sinks[1] = -1.5f; }
static void bwd_bias_11(call *c) { bias_11(c); c->backward = 1; }
static void bwd_mask_11(call *c) { mask_11(c); c->backward = 1; }
static void bwd_vanilla_bias_11(call *c) { bwd_bias_11(c); c->op = MATTN_OP_VANILLA; }
static void seed_top(call *c) { c->opts.dropout_p = 0.25f; c->opts.dropout_seed = 1ULL << 63; }
static void seed_top_plus(call *c) { c->opts.dropout_seed = (1ULL << 63) + 1; }
static void scale_eighth(call *c) { c->opts.scale = 0.125f; }
static void scale_half(call *c) { c->opts.scale = 0.5f; }

static void test_global_arrays_on_one_rank(void **state)
{
    (void)state;
    int size = tl_size();
    const char *contents = "mask, bias or sinks contents";
    expect_on(mask_11, mask_none_allowed, 1, size, MATTN_ERR_ARG, contents,
              "different mask contents (no key allowed)");
    expect_on(mask_11, mask_one_byte, 1, size, MATTN_ERR_ARG, contents,
              "different mask contents (one byte)");
    expect_on(mask_11, mask_1h, 1, size, MATTN_ERR_ARG, "mask.heads", "different mask.heads");
    expect_on(bias_11, bias_value, 1, size, MATTN_ERR_ARG, contents, "different bias value");
    expect_on(bias_11, bias_1h, 1, size, MATTN_ERR_ARG, "bias.heads", "different bias.heads");
    expect_on(with_sinks, sink_value, 1, size, MATTN_ERR_ARG, contents, "different sink");
    /* backward: ring, and the partitioned dbias reduction (dp = size) */
    expect_on(bwd_bias_11, bias_1h, 1, size, MATTN_ERR_ARG, "bias.heads",
              "different bias.heads (ring backward)");
    expect_on(bwd_mask_11, mask_none_allowed, 1, size, MATTN_ERR_ARG, contents,
              "different mask contents (ring backward)");
    expect_on(bwd_vanilla_bias_11, bias_1h, size, 1, MATTN_ERR_ARG, "bias.heads",
              "different bias.heads (vanilla backward, dbias)");
}

/* The seed is a uint64: values at and above 2^63 agree and differ like any
 * other, and floats are printed as floats. */
static void test_agreement_values(void **state)
{
    (void)state;
    int size = tl_size();
    call c;
    call_make(&c, 1, size);
    seed_top(&c);
    assert_int_equal(call_run(&c), MATTN_OK);
    c.opts.dropout_seed = ~0ULL;
    assert_int_equal(call_run(&c), MATTN_OK);
    call_free(&c);
    expect_on(seed_top, seed_top_plus, 1, size, MATTN_ERR_ARG,
              "dropout_seed (from 9223372036854775808 to 9223372036854775809)",
              "different dropout seeds above 2^63");
    expect_on(scale_eighth, scale_half, 1, size, MATTN_ERR_ARG, "scale (from 0.125 to 0.5)",
              "different scale");
}

static void vanilla_op(call *c) { c->op = MATTN_OP_VANILLA; }

static void test_partition_bad_input(void **state)
{
    (void)state;
    int size = tl_size();
    /* flash cannot shard the sequence: every rank says so, and names ring. */
    if (size > 1) {
        call c;
        call_make(&c, 1, size);
        c.op = MATTN_OP_FLASH;
        assert_same_everywhere(call_run(&c), MATTN_ERR_UNSUPPORTED, "MATTN_OP_RING",
                               "flash with sp > 1");
        c.op = MATTN_OP_SPLASH;
        assert_same_everywhere(call_run(&c), MATTN_ERR_UNSUPPORTED, "splash", "splash");
        c.op = (mattn_op)42;
        assert_same_everywhere(call_run(&c), MATTN_ERR_ARG, "operator", "unknown operator");
        call_free(&c);
    }
    /* sp = 1: one rank asks for another operator. */
    if (size > 1)
        expect(vanilla_op, size, 1, MATTN_ERR_ARG, "operator", "different operator");
}

static void null_q_flash(call *c) { c->op = MATTN_OP_FLASH; c->q.data = NULL; }

static void test_partition_bad_input_on_one_rank(void **state)
{
    (void)state;
    int size = tl_size();
    if (size == 1)
        return;
    /* The others run flash too (the perturbation sets the operator only on
     * the culprit), so use a mesh call where all ranks pick flash. */
    int culprits[2] = {size - 1, 0};
    for (int i = 0; i < 2; i++) {
        call c;
        call_make(&c, size, 1);
        c.op = MATTN_OP_FLASH;
        if (tl_rank() == culprits[i])
            null_q_flash(&c);
        assert_same_everywhere(call_run(&c), MATTN_ERR_ARG, "q", "partition q NULL");
        call_free(&c);
    }
}

static void test_scatter_bad_input(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank();
    mattn_mesh *m;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, &m), MATTN_OK);
    mattn_dist_shape shape = {1, T, T, HQ, HKV, MATTN_SEQ_CONTIGUOUS};
    mattn_shard sh;
    assert_int_equal(mattn_mesh_shard(m, &shape, rank, &sh), MATTN_OK);
    float *global = tl_alloc(sizeof(float) * T * HQ * D);
    float *local = tl_alloc(sizeof(float) * T * HQ * D);
    mattn_tensor g = mattn_tensor_bthd(global, 1, T, HQ, D);
    mattn_tensor l = mattn_tensor_bthd(local, 1, sh.q_len, HQ, D);
    for (int i = 0; i < (size > 1 ? 2 : 1); i++) {
        int culprit = i ? 0 : size - 1;
        /* a different root on one rank */
        if (size > 1)
            assert_same_everywhere(mattn_mesh_scatter(m, &shape, MATTN_SHARD_Q,
                                                      rank == culprit ? 1 : 0, &g, &l),
                                   MATTN_ERR_ARG, "root", "different root");
        /* a local shard of the wrong length on one rank */
        mattn_tensor bad = l;
        if (rank == culprit)
            bad.seq += 1;
        assert_same_everywhere(mattn_mesh_scatter(m, &shape, MATTN_SHARD_Q, 0, &g, &bad),
                               MATTN_ERR_SHAPE, "must be", "local shard too long");
        /* a different dim on one rank: the root sees it against the global
         * tensor, another rank only through the agreement */
        bad = l;
        if (rank == culprit)
            bad.dim = D - 1;
        if (size > 1)
            assert_same_everywhere(mattn_mesh_gather(m, &shape, MATTN_SHARD_Q, 0, &bad, &g),
                                   culprit == 0 ? MATTN_ERR_SHAPE : MATTN_ERR_ARG,
                                   culprit == 0 ? "differs" : "dim", "different dim");
    }
    /* NULL global on the root */
    assert_same_everywhere(mattn_mesh_scatter(m, &shape, MATTN_SHARD_Q, 0, NULL, &l),
                           MATTN_ERR_ARG, "global", "global NULL on root");
    /* still usable */
    assert_int_equal(mattn_mesh_scatter(m, &shape, MATTN_SHARD_Q, 0, &g, &l), MATTN_OK);
    free(global), free(local);
    mattn_mesh_free(m);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tl_watchdog("test_ring_errors: TIMEOUT (a bad argument made ranks hang)\n", 120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring_bad_input_on_one_rank),
        cmocka_unit_test(test_global_arrays_on_one_rank),
        cmocka_unit_test(test_agreement_values),
        cmocka_unit_test(test_partition_bad_input),
        cmocka_unit_test(test_partition_bad_input_on_one_rank),
        cmocka_unit_test(test_scatter_bad_input),
    };
    int failed = tl_run_all("ring errors", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
