/* Error paths of the public forward API (mattn_vanilla_forward,
 * mattn_flash_forward, mattn_sdpa_forward): every invalid argument gives the
 * exact status code, mattn_err_name/mattn_strerror strings, a
 * mattn_last_error() that names the culprit, and leaves every output (o, lse,
 * weights, sdpa's *chosen) untouched. Spread over the ranks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/testlib.h"

enum { OP_VANILLA, OP_FLASH, OP_SDPA, N_OPS };
static const char *const OP_NAMES[] = {"vanilla", "flash", "sdpa"};

/* Buffers are far larger than any shape a case describes, so a check that
 * wrongly lets a case through computes garbage instead of crashing. */
#define BUF_FLOATS 65536
#define SENTINEL 12345.0f

/* B=2, T=5, S=6, Hq=4, Hkv=2, D=8, Dv=8: a valid problem that each case
 * then breaks in one way. */
typedef struct fixture {
    float *q, *k, *v, *o, *lse, *w, *bias, *sinks;
    uint8_t *mask;
    int32_t *qseg, *kvseg;
    mattn_tensor tq, tk, tv, to;
    const mattn_tensor *pq, *pk, *pv, *po; /* what is passed (may be NULL) */
    mattn_options opts;
    const mattn_options *popts;
} fixture;

/* In place: the fixture points into itself (pq = &tq, ...). */
static void fx_init(fixture *fp)
{
#define f (*fp)
    memset(&f, 0, sizeof f);
    tl_rng r = tl_rng_make(11);
    f.q = tl_alloc(sizeof(float) * BUF_FLOATS);
    f.k = tl_alloc(sizeof(float) * BUF_FLOATS);
    f.v = tl_alloc(sizeof(float) * BUF_FLOATS);
    f.o = tl_alloc(sizeof(float) * BUF_FLOATS);
    f.lse = tl_alloc(sizeof(float) * BUF_FLOATS);
    f.w = tl_alloc(sizeof(float) * BUF_FLOATS);
    f.bias = tl_alloc(sizeof(float) * BUF_FLOATS);
    f.sinks = tl_alloc(sizeof(float) * 64);
    f.mask = tl_alloc(BUF_FLOATS);
    f.qseg = tl_alloc(sizeof(int32_t) * 1024);
    f.kvseg = tl_alloc(sizeof(int32_t) * 1024);
    tl_fill(&r, f.q, BUF_FLOATS, 1.0);
    tl_fill(&r, f.k, BUF_FLOATS, 1.0);
    tl_fill(&r, f.v, BUF_FLOATS, 1.0);
    memset(f.mask, 1, BUF_FLOATS);
    f.tq = mattn_tensor_bthd(f.q, 2, 5, 4, 8);
    f.tk = mattn_tensor_bthd(f.k, 2, 6, 2, 8);
    f.tv = mattn_tensor_bthd(f.v, 2, 6, 2, 8);
    f.to = mattn_tensor_bthd(f.o, 2, 5, 4, 8);
    f.pq = &f.tq, f.pk = &f.tk, f.pv = &f.tv, f.po = &f.to;
    f.opts = mattn_options_default();
    f.popts = &f.opts;
#undef f
}

static void fx_free(fixture *f)
{
    free(f->q), free(f->k), free(f->v), free(f->o), free(f->lse), free(f->w);
    free(f->bias), free(f->sinks), free(f->mask), free(f->qseg), free(f->kvseg);
}

static void fill_sentinels(fixture *f)
{
    for (int x = 0; x < BUF_FLOATS; x++)
        f->o[x] = f->lse[x] = f->w[x] = SENTINEL;
}

static void check_sentinels(const fixture *f, const char *what)
{
    for (int x = 0; x < BUF_FLOATS; x++)
        if (f->o[x] != SENTINEL || f->lse[x] != SENTINEL || f->w[x] != SENTINEL)
            fail_msg("%s: an output was written at element %d despite the error", what, x);
}

static int call(fixture *f, int op, mattn_kernel *chosen)
{
    switch (op) {
    case OP_VANILLA:
        return mattn_vanilla_forward(f->pq, f->pk, f->pv, f->po, f->lse, f->w, f->popts);
    case OP_FLASH:
        return mattn_flash_forward(f->pq, f->pk, f->pv, f->po, f->lse, f->popts);
    default:
        return mattn_sdpa_forward(f->pq, f->pk, f->pv, f->po, f->lse, f->popts, chosen);
    }
}

/* Every operator must fail with `code`, the culprit named in the message. */
static void expect_error(fixture *f, int code, const char *needle, const char *what)
{
    for (int op = 0; op < N_OPS; op++) {
        fill_sentinels(f);
        mattn_kernel chosen = (mattn_kernel)77;
        int rc = call(f, op, &chosen);
        if (rc != code)
            fail_msg("%s (%s): status %d (%s), expected %d (%s); last error \"%s\"", what,
                     OP_NAMES[op], rc, mattn_err_name(rc), code, mattn_err_name(code),
                     mattn_last_error());
        if (strstr(mattn_last_error(), needle) == NULL)
            fail_msg("%s (%s): last error \"%s\" does not contain \"%s\"", what, OP_NAMES[op],
                     mattn_last_error(), needle);
        char where[96];
        snprintf(where, sizeof where, "%s (%s)", what, OP_NAMES[op]);
        check_sentinels(f, where);
        assert_int_equal((int)chosen, 77);
    }
}

/* And a valid problem works on every operator (the fixture is not broken). */
static void expect_ok(fixture *f, const char *what)
{
    for (int op = 0; op < N_OPS; op++) {
        fill_sentinels(f);
        int rc = call(f, op, NULL);
        if (rc != MATTN_OK)
            fail_msg("%s (%s): status %s: %s", what, OP_NAMES[op], mattn_err_name(rc),
                     mattn_last_error());
    }
}

/* ------------------------------------------------------------------ status strings */

static void test_status_strings(void **state)
{
    (void)state;
    static const struct {
        int code;
        const char *name, *msg;
    } table[] = {
        {MATTN_OK, "MATTN_OK", "success"},
        {MATTN_ERR_ARG, "MATTN_ERR_ARG", "invalid argument"},
        {MATTN_ERR_SHAPE, "MATTN_ERR_SHAPE", "inconsistent or invalid tensor shape"},
        {MATTN_ERR_UNSUPPORTED, "MATTN_ERR_UNSUPPORTED", "option not supported by this operator"},
        {MATTN_ERR_NOMEM, "MATTN_ERR_NOMEM", "out of memory"},
        {MATTN_ERR_MPI, "MATTN_ERR_MPI", "MPI error"},
        {MATTN_ERR_IO, "MATTN_ERR_IO", "file read/write or format error"},
    };
    for (size_t x = 0; x < sizeof table / sizeof *table; x++) {
        assert_string_equal(mattn_err_name(table[x].code), table[x].name);
        assert_string_equal(mattn_strerror(table[x].code), table[x].msg);
    }
    /* The codes SPEC §6 fixes. */
    assert_int_equal(MATTN_OK, 0);
    assert_true(MATTN_ERR_ARG < 0 && MATTN_ERR_SHAPE < 0 && MATTN_ERR_IO < 0);
    assert_string_equal(mattn_strerror(-999), "unknown error");
    assert_string_equal(mattn_err_name(-999), "MATTN_UNKNOWN");
    assert_string_equal(mattn_strerror(1), "unknown error");
}

/* ------------------------------------------------------------------ NULLs */

static void test_null_arguments(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    expect_ok(&f, "valid fixture");
    f.pq = NULL;
    expect_error(&f, MATTN_ERR_ARG, "q is NULL", "q NULL");
    f.pq = &f.tq, f.pk = NULL;
    expect_error(&f, MATTN_ERR_ARG, "k is NULL", "k NULL");
    f.pk = &f.tk, f.pv = NULL;
    expect_error(&f, MATTN_ERR_ARG, "v is NULL", "v NULL");
    f.pv = &f.tv, f.po = NULL;
    expect_error(&f, MATTN_ERR_ARG, "o is NULL", "o NULL");
    f.po = &f.to, f.popts = NULL;
    expect_error(&f, MATTN_ERR_ARG, "options are NULL", "opts NULL");
    f.popts = &f.opts;

    /* NULL data with a non-zero size. */
    f.tq.data = NULL;
    expect_error(&f, MATTN_ERR_ARG, "q->data is NULL", "q data NULL");
    f.tq.data = f.q, f.tk.data = NULL;
    expect_error(&f, MATTN_ERR_ARG, "k->data is NULL", "k data NULL");
    f.tk.data = f.k, f.tv.data = NULL;
    expect_error(&f, MATTN_ERR_ARG, "v->data is NULL", "v data NULL");
    f.tv.data = f.v, f.to.data = NULL;
    expect_error(&f, MATTN_ERR_ARG, "o->data is NULL", "o data NULL");
    f.to.data = f.o;
    expect_ok(&f, "restored");

    /* NULL data is fine when there is nothing to read or write. */
    f.tq.batch = f.tk.batch = f.tv.batch = f.to.batch = 0;
    f.tq.data = f.tk.data = f.tv.data = f.to.data = NULL;
    expect_ok(&f, "B = 0 with NULL data");
    fx_free(&f);
}

/* ------------------------------------------------------------------ shapes */

static void test_heads(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    f.tq = mattn_tensor_bthd(f.q, 2, 5, 12, 8);
    f.to = mattn_tensor_bthd(f.o, 2, 5, 12, 8);
    f.tk = mattn_tensor_bthd(f.k, 2, 6, 5, 8);
    f.tv = mattn_tensor_bthd(f.v, 2, 6, 5, 8);
    expect_error(&f, MATTN_ERR_SHAPE, "q_heads=12 is not a multiple of kv_heads=5", "Hq % Hkv");
    f.tk.heads = f.tv.heads = 24; /* more kv heads than q heads */
    expect_error(&f, MATTN_ERR_SHAPE, "q_heads=12 is not a multiple of kv_heads=24", "Hkv > Hq");
    f.tk.heads = f.tv.heads = 3;
    expect_ok(&f, "Hq=12, Hkv=3");
    f.tk.heads = f.tv.heads = 1;
    expect_ok(&f, "MQA");
    fx_free(&f);
}

static void test_dims_mismatch(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    f.tk = mattn_tensor_bthd(f.k, 2, 6, 2, 4);
    expect_error(&f, MATTN_ERR_SHAPE, "q head_dim 8 != k head_dim 4", "D of k");
    f.tk = mattn_tensor_bthd(f.k, 2, 6, 2, 8);
    f.to = mattn_tensor_bthd(f.o, 2, 5, 4, 16);
    expect_error(&f, MATTN_ERR_SHAPE, "o head_dim 16 != v head_dim 8", "Dv of o");
    f.tv = mattn_tensor_bthd(f.v, 2, 6, 2, 16);
    expect_ok(&f, "Dv = 16 != D");
    fx_free(&f);
}

static void test_batch_seq_heads_mismatch(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    f.tk.batch = 3;
    expect_error(&f, MATTN_ERR_SHAPE, "batch sizes differ: q 2, k 3, v 2, o 2", "k batch");
    f.tk.batch = 2, f.tv.batch = 1;
    expect_error(&f, MATTN_ERR_SHAPE, "batch sizes differ: q 2, k 2, v 1, o 2", "v batch");
    f.tv.batch = 2, f.to.batch = 4;
    expect_error(&f, MATTN_ERR_SHAPE, "batch sizes differ: q 2, k 2, v 2, o 4", "o batch");
    f.to.batch = 2, f.tv.seq = 7;
    expect_error(&f, MATTN_ERR_SHAPE, "k has 6 keys but v has 7", "v seq");
    f.tv.seq = 6, f.to.seq = 4;
    expect_error(&f, MATTN_ERR_SHAPE, "q has 5 rows but o has 4", "o seq");
    f.to.seq = 5, f.tv.heads = 1;
    expect_error(&f, MATTN_ERR_SHAPE, "k has 2 heads but v has 1", "v heads");
    f.tv.heads = 2, f.to.heads = 2;
    expect_error(&f, MATTN_ERR_SHAPE, "q has 4 heads but o has 2", "o heads");
    f.to.heads = 4;

    /* Invalid shapes of one tensor. */
    f.tq.heads = 0;
    expect_error(&f, MATTN_ERR_SHAPE, "q has invalid shape [2, 5, 0, 8]", "0 heads");
    f.tq.heads = 4, f.tk.dim = 0;
    expect_error(&f, MATTN_ERR_SHAPE, "k has invalid shape [2, 6, 2, 0]", "0 dim");
    f.tk.dim = 8, f.tv.batch = -1;
    expect_error(&f, MATTN_ERR_SHAPE, "v has invalid shape [-1, 6, 2, 8]", "negative batch");
    f.tv.batch = 2, f.to.seq = -5;
    expect_error(&f, MATTN_ERR_SHAPE, "o has invalid shape [2, -5, 4, 8]", "negative seq");
    f.to.seq = 5, f.tq.batch = f.tq.seq = (int64_t)1 << 40;
    expect_error(&f, MATTN_ERR_SHAPE, "q has too many elements", "element count overflow");
    f.tq.batch = 2, f.tq.seq = 5, f.tq.dim = ((int64_t)1 << 40) + 1;
    expect_error(&f, MATTN_ERR_SHAPE, "q has invalid shape", "dim beyond 2^40");
    f.tq.dim = 8;
    expect_ok(&f, "restored");
    fx_free(&f);
}

static void test_negative_strides(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    mattn_tensor *t[4] = {&f.tq, &f.tk, &f.tv, &f.to};
    const char *names[4] = {"q", "k", "v", "o"};
    for (int x = 0; x < 4; x++)
        for (int s = 0; s < 3; s++) {
            mattn_tensor saved = *t[x];
            int64_t *stride = s == 0 ? &t[x]->stride_batch
                              : s == 1 ? &t[x]->stride_seq
                                       : &t[x]->stride_head;
            *stride = -*stride;
            char needle[48], what[48];
            snprintf(needle, sizeof needle, "%s has a negative stride", names[x]);
            snprintf(what, sizeof what, "%s stride %d", names[x], s);
            expect_error(&f, MATTN_ERR_ARG, needle, what);
            *t[x] = saved;
        }
    expect_ok(&f, "restored");
    fx_free(&f);
}

/* ------------------------------------------------------------------ options */

static void test_options(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    mattn_options *o = &f.opts;
    const mattn_options ok = mattn_options_default();

    o->window_left = -2;
    expect_error(&f, MATTN_ERR_ARG, "window (-2, -1) is below -1", "window left -2");
    *o = ok, o->window_right = -7;
    expect_error(&f, MATTN_ERR_ARG, "window (-1, -7) is below -1", "window right -7");
    *o = ok, o->window_left = ((int64_t)1 << 60) + 1;
    expect_error(&f, MATTN_ERR_ARG, "window is too large", "window beyond 2^60");
    *o = ok, o->chunk = -1;
    expect_error(&f, MATTN_ERR_ARG, "chunk=-1", "chunk -1");
    *o = ok, o->q_offset = ((int64_t)1 << 61);
    expect_error(&f, MATTN_ERR_ARG, "q_offset/kv_offset", "q_offset 2^61");
    *o = ok, o->kv_offset = -((int64_t)1 << 61);
    expect_error(&f, MATTN_ERR_ARG, "q_offset/kv_offset", "kv_offset -2^61");

    static const float bad_p[] = {-0.1f, 1.0f, 1.5f, NAN, INFINITY, -INFINITY};
    for (size_t x = 0; x < sizeof bad_p / sizeof *bad_p; x++) {
        *o = ok, o->dropout_p = bad_p[x];
        char what[48];
        snprintf(what, sizeof what, "dropout_p %g", (double)bad_p[x]);
        expect_error(&f, MATTN_ERR_ARG, "dropout_p=", what);
        assert_non_null(strstr(mattn_last_error(), "outside [0, 1)"));
    }
    *o = ok, o->dropout_p = nextafterf(1.0f, 0.0f); /* the largest valid p */
    expect_ok(&f, "dropout just below 1");
    *o = ok, o->dropout_batch_offset = -1;
    expect_error(&f, MATTN_ERR_ARG, "dropout batch/head offsets", "dropout batch offset");
    *o = ok, o->dropout_head_offset = -3;
    expect_error(&f, MATTN_ERR_ARG, "dropout batch/head offsets", "dropout head offset");

    static const float bad_scale[] = {NAN, INFINITY, -INFINITY};
    for (size_t x = 0; x < 3; x++) {
        *o = ok, o->scale = bad_scale[x];
        expect_error(&f, MATTN_ERR_ARG, "scale=", "non-finite scale");
        assert_non_null(strstr(mattn_last_error(), "not finite"));
    }
    static const float bad_cap[] = {-1.0f, -0.0001f, NAN, INFINITY};
    for (size_t x = 0; x < 4; x++) {
        *o = ok, o->softcap = bad_cap[x];
        expect_error(&f, MATTN_ERR_ARG, "softcap=", "bad softcap");
    }

    *o = ok, o->threads = -1;
    expect_error(&f, MATTN_ERR_ARG, "threads=-1 is negative", "threads -1");
    *o = ok, o->block_q = -1;
    expect_error(&f, MATTN_ERR_ARG, "block sizes (-1, 0) must be in [0, 65536]", "block_q -1");
    *o = ok, o->block_q = 65537;
    expect_error(&f, MATTN_ERR_ARG, "block sizes (65537, 0)", "block_q 65537");
    *o = ok, o->block_kv = -16;
    expect_error(&f, MATTN_ERR_ARG, "block sizes (0, -16)", "block_kv -16");
    *o = ok, o->block_kv = 70000;
    expect_error(&f, MATTN_ERR_ARG, "block sizes (0, 70000)", "block_kv 70000");
    *o = ok, o->block_q = 65536, o->block_kv = 1;
    expect_ok(&f, "block sizes at the edges");
    *o = ok;
    expect_ok(&f, "restored");
    fx_free(&f);
}

static void test_segments_alone(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    f.opts.q_segment_ids = f.qseg;
    expect_error(&f, MATTN_ERR_ARG, "q_segment_ids and kv_segment_ids must be given together",
                 "q segments alone");
    f.opts.q_segment_ids = NULL, f.opts.kv_segment_ids = f.kvseg;
    expect_error(&f, MATTN_ERR_ARG, "q_segment_ids and kv_segment_ids must be given together",
                 "kv segments alone");
    f.opts.q_segment_ids = f.qseg;
    expect_ok(&f, "both");
    fx_free(&f);
}

static void test_sinks(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    f.opts.sinks = f.sinks;
    f.sinks[1] = NAN;
    expect_error(&f, MATTN_ERR_ARG, "sinks[1]=nan", "NaN sink");
    f.sinks[1] = 0.0f, f.sinks[3] = INFINITY;
    expect_error(&f, MATTN_ERR_ARG, "sinks[3]=inf", "+inf sink");
    f.sinks[3] = -INFINITY; /* -inf is a sink that never wins: allowed */
    expect_ok(&f, "-inf sink");
    fx_free(&f);
}

/* Mask and bias: [B|1, Hq|1, T, S], checked dimension by dimension. */
static void test_mask_bias_shapes(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    static const int64_t bad[][4] = {
        {3, 1, 5, 6}, /* batch neither 1 nor B */
        {0, 1, 5, 6}, /* batch 0 while B = 2 */
        {1, 3, 5, 6}, /* heads neither 1 nor Hq */
        {1, 2, 5, 6}, /* heads = Hkv is not enough */
        {1, 1, 4, 6}, /* rows != T */
        {1, 1, 5, 7}, /* cols != S */
        {2, 4, 6, 5}, /* T and S swapped */
    };
    for (size_t x = 0; x < sizeof bad / sizeof *bad; x++) {
        char needle[96], what[48];
        snprintf(needle, sizeof needle, "mask is [%lld, %lld, %lld, %lld] but must be "
                 "[2|1, 4|1, 5, 6]", (long long)bad[x][0], (long long)bad[x][1],
                 (long long)bad[x][2], (long long)bad[x][3]);
        snprintf(what, sizeof what, "mask case %zu", x);
        f.opts.mask = mattn_mask_dense(f.mask, bad[x][0], bad[x][1], bad[x][2], bad[x][3]);
        expect_error(&f, MATTN_ERR_SHAPE, needle, what);
        f.opts.mask.data = NULL;
        needle[0] = 'b', needle[1] = 'i', needle[2] = 'a', needle[3] = 's'; /* "bias is [" */
        f.opts.bias = mattn_bias_dense(f.bias, bad[x][0], bad[x][1], bad[x][2], bad[x][3]);
        expect_error(&f, MATTN_ERR_SHAPE, needle, what);
        f.opts.bias.data = NULL;
    }
    f.opts.mask = mattn_mask_dense(f.mask, 2, 4, 5, 6);
    f.opts.mask.stride_head = -30;
    expect_error(&f, MATTN_ERR_ARG, "mask has a negative stride", "mask stride");
    f.opts.mask = mattn_mask_dense(f.mask, 1, 1, 5, 6);
    f.opts.mask.stride_row = -6;
    expect_error(&f, MATTN_ERR_ARG, "mask has a negative stride", "mask row stride");
    f.opts.mask.data = NULL;
    f.opts.bias = mattn_bias_dense(f.bias, 2, 1, 5, 6);
    f.opts.bias.stride_batch = -30;
    expect_error(&f, MATTN_ERR_ARG, "bias has a negative stride", "bias stride");
    /* Every accepted broadcast works. */
    static const int64_t good[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (size_t x = 0; x < 4; x++) {
        f.opts.mask = mattn_mask_dense(f.mask, good[x][0], good[x][1], 5, 6);
        f.opts.bias = mattn_bias_dense(f.bias, good[x][0], good[x][1], 5, 6);
        expect_ok(&f, "broadcast mask and bias");
    }
    fx_free(&f);
}

/* An error leaves no state behind: the next valid call succeeds and writes. */
static void test_recovery(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    f.opts.chunk = -5;
    expect_error(&f, MATTN_ERR_ARG, "chunk=-5", "chunk -5");
    f.opts.chunk = 0;
    for (int op = 0; op < N_OPS; op++) {
        fill_sentinels(&f);
        assert_int_equal(call(&f, op, NULL), MATTN_OK);
        for (int x = 0; x < 2 * 5 * 4 * 8; x++)
            assert_true(isfinite(f.o[x]) && f.o[x] != SENTINEL);
        for (int x = 0; x < 2 * 4 * 5; x++)
            assert_true(isfinite(f.lse[x]) && f.lse[x] != SENTINEL);
    }
    fx_free(&f);
}

/* An output whose elements overlap (o.stride_seq = 0 puts every query row on
 * one memory row; stride_head < Dv makes heads share half a row) would be a
 * silent wrong answer and, with threads, a data race: it is refused. */
static void test_overlapping_output(void **state)
{
    (void)state;
    fixture f;
    fx_init(&f);
    f.to.stride_seq = 0;
    expect_error(&f, MATTN_ERR_ARG, "o", "o rows overlap (stride_seq 0)");
    f.to = mattn_tensor_bthd(f.o, 2, 5, 4, 8);
    f.to.stride_head = 4; /* heads overlap by half a row */
    expect_error(&f, MATTN_ERR_ARG, "o", "o heads overlap (stride_head < Dv)");
    f.to = mattn_tensor_bthd(f.o, 2, 5, 4, 8);
    /* o[1, 0] and o[0, 1] are one element; the span of the seq dim is past
     * INT64_MAX (the check overflowed and missed it) */
    f.to.stride_batch = f.to.stride_seq = (int64_t)1 << 62;
    expect_error(&f, MATTN_ERR_ARG, "overlap", "o batch and seq strides both 2^62");
    f.to = mattn_tensor_bthd(f.o, 2, 5, 4, 8);
    /* no element (batch 0), but sizes whose product does not fit int64 */
    f.tq = mattn_tensor_bthd(f.q, 0, (int64_t)1 << 40, (int64_t)1 << 40, (int64_t)1 << 40);
    expect_error(&f, MATTN_ERR_SHAPE, "too many elements", "empty q of 2^120 elements");
    f.tq = mattn_tensor_bthd(f.q, 2, 5, 4, 8);
    f.opts.threads = 1 << 20;
    expect_error(&f, MATTN_ERR_ARG, "threads", "threads beyond the cap");
    f.opts.threads = 0;
    expect_ok(&f, "threads = 0 (all CPUs) after the errors");
    fx_free(&f);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_heads),
        cmocka_unit_test(test_dims_mismatch),
        cmocka_unit_test(test_batch_seq_heads_mismatch),
        cmocka_unit_test(test_negative_strides),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_segments_alone),
        cmocka_unit_test(test_sinks),
        cmocka_unit_test(test_mask_bias_shapes),
        cmocka_unit_test(test_recovery),
        cmocka_unit_test(test_overlapping_output),
    };
    int failed = tl_run_spread("errors", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
