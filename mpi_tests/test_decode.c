/* ar_decode and ragged_decode on one rank: every case against the float64
 * reference of test_decode_ref.h (MHA/GQA/MQA, empty, length-1 and unaligned
 * ranges, window, soft cap, sinks, chunk, D != Dv, strided layouts, split-KV
 * pieces, threads), bit-identity across thread counts, the cost estimate's
 * exact counts, the errors, and the AVX-512 inner loops against portable C. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/testlib.h"
#include "decode/decode.h"
#include "kernels/vecmath.h"
#include "test_decode_ref.h"

/* A logical problem: q [B, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv]. */
typedef struct dcase {
    int64_t B, Hq, Hkv, D, Dv, S;
    float *q, *k, *v;
    int32_t *starts, *ends;
    mattn_options opts;
    char layout; /* cache layout: 't' BTHD, 'h' BHTD, 'p' padded strides */
} dcase;

static dcase dcase_make(uint64_t seed, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                        int64_t Dv, int64_t S)
{
    tl_rng r = tl_rng_make(seed);
    dcase c = {.B = B, .Hq = Hq, .Hkv = Hkv, .D = D, .Dv = Dv, .S = S, .layout = 't'};
    c.q = tl_alloc(sizeof(float) * (size_t)(B * Hq * D));
    c.k = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * D + 1));
    c.v = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * Dv + 1));
    tl_fill(&r, c.q, B * Hq * D, 2.0);
    tl_fill(&r, c.k, B * S * Hkv * D, 2.0);
    tl_fill(&r, c.v, B * S * Hkv * Dv, 1.0);
    c.starts = tl_alloc(sizeof(int32_t) * (size_t)(B + 1));
    c.ends = tl_alloc(sizeof(int32_t) * (size_t)(B + 1));
    /* A mix of full, empty, length-1, unaligned and random ranges. */
    for (int64_t b = 0; b < B; b++) {
        int64_t lo, hi;
        switch (b % 6) {
        case 0: lo = 0, hi = S; break;
        case 1: lo = hi = S / 3; break;             /* empty */
        case 2: lo = S / 2, hi = S / 2 + 1; break;  /* length 1 */
        case 3: lo = 3 < S ? 3 : S, hi = S - S / 5; break; /* unaligned */
        case 4: lo = S > 0 ? S - 1 : 0, hi = S; break;     /* the last key only */
        default:
            lo = tl_int(&r, S + 1);
            hi = lo + tl_int(&r, S - lo + 1);
        }
        c.starts[b] = (int32_t)lo, c.ends[b] = (int32_t)(hi < lo ? lo : hi);
    }
    c.opts = mattn_options_default();
    return c;
}

static void dcase_free(dcase *c)
{
    free(c->q), free(c->k), free(c->v), free(c->starts), free(c->ends);
}

/* The cache as the library sees it, in c->layout. */
static float *cache_view(const dcase *c, const float *src, int64_t Dm, mattn_tensor *t)
{
    int64_t B = c->B, S = c->S, H = c->Hkv;
    if (c->layout == 'h') {
        float *buf = tl_alloc(sizeof(float) * (size_t)(B * S * H * Dm + 1));
        *t = mattn_tensor_bhtd(buf, B, S, H, Dm);
    } else if (c->layout == 'p') {
        int64_t sh = Dm + 3, ss = H * sh + 5, sb = S * ss + 7;
        float *buf = tl_alloc(sizeof(float) * (size_t)(B * sb + 1));
        *t = (mattn_tensor){buf, B, S, H, Dm, sb, ss, sh};
    } else {
        float *buf = tl_alloc(sizeof(float) * (size_t)(B * S * H * Dm + 1));
        *t = mattn_tensor_bthd(buf, B, S, H, Dm);
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t j = 0; j < S; j++)
            for (int64_t h = 0; h < H; h++)
                memcpy(t->data + b * t->stride_batch + j * t->stride_seq + h * t->stride_head,
                       src + ((b * S + j) * H + h) * Dm, sizeof(float) * (size_t)Dm);
    return t->data;
}

static dref_opts ref_opts(const dcase *c)
{
    dref_opts op = {.scale = (double)(c->opts.scale != 0.0f
                                          ? c->opts.scale
                                          : (float)(1.0 / sqrt((double)c->D))),
                    .softcap = (double)c->opts.softcap,
                    .window_left = c->opts.window_left,
                    .window_right = c->opts.window_right,
                    .chunk = c->opts.chunk,
                    .sinks = c->opts.sinks};
    int64_t piece = c->opts.block_kv > 0 ? c->opts.block_kv : 2048;
    op.merges = c->S / piece + 3;
    return op;
}

/* Runs ragged (with m, l, lse) and ar (with lse) decode and checks every
 * row against the reference. Outputs start as NaN: a row left unwritten
 * fails. Returns o of the ragged run (caller frees) for bit comparisons. */
static float *run_and_check(const char *what, const dcase *c, int threads)
{
    int64_t B = c->B, Hq = c->Hq, Dv = c->Dv, n = B * Hq;
    mattn_tensor k, v;
    float *kb = cache_view(c, c->k, c->D, &k), *vb = cache_view(c, c->v, c->Dv, &v);
    mattn_tensor q = mattn_tensor_bthd(c->q, B, 1, Hq, c->D);
    float *o = tl_alloc(sizeof(float) * (size_t)(n * Dv + 1));
    float *o2 = tl_alloc(sizeof(float) * (size_t)(n * Dv + 1));
    float *lse = tl_alloc(sizeof(float) * (size_t)(n + 1)), *lse2 = tl_alloc(sizeof(float) * (size_t)(n + 1));
    float *m = tl_alloc(sizeof(float) * (size_t)(n + 1)), *l = tl_alloc(sizeof(float) * (size_t)(n + 1));
    for (int64_t i = 0; i < n * Dv; i++)
        o[i] = o2[i] = NAN;
    for (int64_t i = 0; i < n; i++)
        lse[i] = lse2[i] = m[i] = l[i] = NAN;
    mattn_tensor to = mattn_tensor_bthd(o, B, 1, Hq, Dv), to2 = mattn_tensor_bthd(o2, B, 1, Hq, Dv);
    mattn_options opts = c->opts;
    opts.threads = threads;
    int rc = mattn_ragged_decode(&q, &k, &v, c->starts, c->ends, &to, m, l, lse, &opts);
    if (rc != MATTN_OK)
        fail_msg("%s: ragged decode returned %s: %s", what, mattn_err_name(rc), mattn_last_error());
    rc = mattn_ar_decode(&q, &k, &v, c->starts, c->ends, &to2, lse2, &opts);
    if (rc != MATTN_OK)
        fail_msg("%s: ar decode returned %s: %s", what, mattn_err_name(rc), mattn_last_error());

    dref_opts op = ref_opts(c);
    /* the cache's row j is position kv_offset + j */
    double *ro = tl_alloc(sizeof(double) * (size_t)Dv);
    int64_t off = c->opts.kv_offset;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++) {
            dref_row r;
            /* the logical keys of batch b start at position 0 = cache row -off */
            dref_row_compute(&op, c->q + (b * Hq + h) * c->D, c->k + b * c->S * c->Hkv * c->D,
                             c->v + b * c->S * c->Hkv * c->Dv, off, Hq, c->Hkv, c->D, Dv, h,
                             c->ends[b] - 1, c->starts[b], c->ends[b], ro, &r);
            int64_t row = b * Hq + h;
            dref_check_row(what, b, 0, h, o + row * Dv, ro, Dv, lse + row, m + row, l + row, &r);
            dref_check_row(what, b, 0, h, o2 + row * Dv, ro, Dv, lse2 + row, NULL, NULL, &r);
        }
    free(ro), free(kb), free(vb), free(o2), free(lse), free(lse2), free(m), free(l);
    return o;
}

static void test_heads_and_ranges(void **state)
{
    (void)state;
    const int64_t heads[][2] = {{4, 4}, {8, 2}, {6, 1}, {3, 3}};
    const int64_t dims[][2] = {{16, 16}, {37, 24}, {64, 128}};
    uint64_t seed = 1;
    for (size_t hi = 0; hi < 4; hi++)
        for (size_t di = 0; di < 3; di++)
            for (int threads = 1; threads <= 2; threads++) {
                dcase c = dcase_make(seed++, 7, heads[hi][0], heads[hi][1], dims[di][0],
                                     dims[di][1], 70);
                char what[96];
                snprintf(what, sizeof what, "Hq=%lld Hkv=%lld D=%lld Dv=%lld threads=%d",
                         (long long)c.Hq, (long long)c.Hkv, (long long)c.D, (long long)c.Dv,
                         threads);
                free(run_and_check(what, &c, threads));
                dcase_free(&c);
            }
}

static void test_options(void **state)
{
    (void)state;
    float sinks[8] = {0.5f, -1.0f, 3.0f, -INFINITY, 0.0f, 8.0f, -2.5f, 1.0f};
    struct {
        int64_t wl, wr, chunk;
        float cap;
        int sink;
        int64_t kv_offset;
    } cases[] = {
        {7, 0, 0, 0, 0, 0},  {0, 0, 0, 0, 0, 0},   {-1, 3, 0, 0, 0, 0},
        {-1, -1, 0, 5, 0, 0}, {-1, -1, 0, 0, 1, 0}, {-1, -1, 16, 0, 0, 0},
        {20, -1, 16, 2, 1, 0}, {12, 0, 0, 0.7f, 1, 9}, {-1, -1, 0, 0, 0, 13},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dcase c = dcase_make(100 + i, 8, 8, 2, 32, 20, 90);
        c.opts.window_left = cases[i].wl, c.opts.window_right = cases[i].wr;
        c.opts.chunk = cases[i].chunk, c.opts.softcap = cases[i].cap;
        c.opts.sinks = cases[i].sink ? sinks : NULL;
        c.opts.kv_offset = cases[i].kv_offset;
        /* a cache that starts at kv_offset: ranges must lie in it */
        for (int64_t b = 0; b < c.B; b++) {
            int64_t off = c.opts.kv_offset, S = c.S;
            if (c.starts[b] < off)
                c.starts[b] = (int32_t)off;
            if (c.ends[b] > off + S)
                c.ends[b] = (int32_t)(off + S);
            if (c.ends[b] < c.starts[b])
                c.ends[b] = c.starts[b];
        }
        char what[128];
        snprintf(what, sizeof what, "window (%lld,%lld) chunk %lld cap %g sinks %d kv_offset %lld",
                 (long long)cases[i].wl, (long long)cases[i].wr, (long long)cases[i].chunk,
                 cases[i].cap, cases[i].sink, (long long)cases[i].kv_offset);
        free(run_and_check(what, &c, 2));
        dcase_free(&c);
    }
}

static void test_layouts_and_scale(void **state)
{
    (void)state;
    const char layouts[] = {'t', 'h', 'p'};
    for (int i = 0; i < 3; i++) {
        dcase c = dcase_make(200 + i, 5, 4, 2, 24, 40, 50);
        c.layout = layouts[i];
        c.opts.scale = 0.3f;
        char what[64];
        snprintf(what, sizeof what, "layout %c scale 0.3", layouts[i]);
        free(run_and_check(what, &c, 1));
        dcase_free(&c);
    }
}

/* Split-KV: small pieces force many partial merges; the result must match
 * the reference and be bit-identical at every thread count (pieces depend on
 * the problem only). */
static void test_split_kv_and_threads(void **state)
{
    (void)state;
    const int pieces[] = {1, 7, 16, 64};
    float sinks[4] = {1.0f, -0.5f, 2.0f, 0.0f};
    for (size_t i = 0; i < 4; i++) {
        dcase c = dcase_make(300 + i, 3, 4, 2, 16, 16, 260);
        c.opts.block_kv = pieces[i];
        c.opts.sinks = i % 2 ? sinks : NULL;
        c.opts.window_left = i == 3 ? 100 : -1;
        char what[64];
        snprintf(what, sizeof what, "piece %d threads 1", pieces[i]);
        float *o1 = run_and_check(what, &c, 1);
        for (int th = 2; th <= 3; th++) {
            snprintf(what, sizeof what, "piece %d threads %d", pieces[i], th);
            float *o = run_and_check(what, &c, th);
            assert_memory_equal(o, o1, sizeof(float) * (size_t)(c.B * c.Hq * c.Dv));
            free(o);
        }
        free(o1);
        dcase_free(&c);
    }
}

/* Many sequences (no split) and long ones (split with the default piece). */
static void test_many_and_long(void **state)
{
    (void)state;
    dcase c = dcase_make(400, 70, 4, 1, 16, 16, 40);
    free(run_and_check("70 sequences", &c, 2));
    dcase_free(&c);
    c = dcase_make(401, 2, 8, 2, 64, 64, 5000);
    free(run_and_check("S=5000 default pieces", &c, 2));
    dcase_free(&c);
}

static void test_empty_rows(void **state)
{
    (void)state;
    float sinks[4] = {1.5f, -2.0f, 0.0f, 7.0f};
    for (int with_sinks = 0; with_sinks <= 1; with_sinks++)
        for (int piece = 0; piece <= 4; piece += 4) {
            dcase c = dcase_make(500, 4, 4, 2, 16, 8, 30);
            for (int64_t b = 0; b < c.B; b++)
                c.starts[b] = c.ends[b] = (int32_t)(b * 7); /* every range empty */
            c.opts.sinks = with_sinks ? sinks : NULL;
            c.opts.block_kv = piece;
            free(run_and_check("all empty", &c, 2));
            /* exact values: o = 0, lse = sink or -inf, m = sink or -inf, l = 1 or 0 */
            mattn_tensor q = mattn_tensor_bthd(c.q, c.B, 1, c.Hq, c.D);
            mattn_tensor k = mattn_tensor_bthd(c.k, c.B, c.S, c.Hkv, c.D);
            mattn_tensor v = mattn_tensor_bthd(c.v, c.B, c.S, c.Hkv, c.Dv);
            float o[4 * 4 * 8], lse[16], m[16], l[16];
            mattn_tensor to = mattn_tensor_bthd(o, c.B, 1, c.Hq, c.Dv);
            assert_int_equal(mattn_ragged_decode(&q, &k, &v, c.starts, c.ends, &to, m, l, lse,
                                                 &c.opts),
                             MATTN_OK);
            for (int i = 0; i < 16; i++) {
                float want = with_sinks ? sinks[i % 4] : -INFINITY;
                assert_true(lse[i] == want && m[i] == want);
                assert_true(l[i] == (with_sinks ? 1.0f : 0.0f));
            }
            for (int i = 0; i < 4 * 4 * 8; i++)
                assert_true(o[i] == 0.0f);
            dcase_free(&c);
        }
}

/* Exact counts from a naive count of allowed keys. */
static void test_cost(void **state)
{
    (void)state;
    dcase c = dcase_make(600, 9, 8, 2, 32, 48, 64);
    mattn_tensor q = mattn_tensor_bthd(NULL, c.B, 1, c.Hq, c.D);
    mattn_tensor k = mattn_tensor_bthd(NULL, c.B, c.S, c.Hkv, c.D);
    mattn_tensor v = mattn_tensor_bthd(NULL, c.B, c.S, c.Hkv, c.Dv);
    for (int variant = 0; variant < 3; variant++) {
        c.opts.window_left = variant == 1 ? 5 : -1;
        c.opts.chunk = variant == 2 ? 16 : 0;
        c.opts.softcap = variant == 2 ? 3.0f : 0.0f;
        dref_opts op = ref_opts(&c);
        int64_t L = 0;
        for (int64_t b = 0; b < c.B; b++)
            for (int64_t j = 0; j < c.S; j++)
                L += dref_allowed(&op, c.ends[b] - 1, c.starts[b], c.ends[b], j);
        mattn_decode_cost cost;
        assert_int_equal(mattn_ragged_decode_cost(&q, &k, &v, c.starts, c.ends, &c.opts, &cost),
                         MATTN_OK);
        assert_int_equal(cost.keys, L);
        assert_int_equal(cost.flops, 2 * c.Hq * L * (c.D + c.Dv));
        assert_int_equal(cost.exps, c.Hq * L);
        assert_int_equal(cost.tanhs, variant == 2 ? c.Hq * L : 0);
        assert_int_equal(cost.kv_bytes, 4 * c.Hkv * L * (c.D + c.Dv));
        assert_int_equal(cost.bytes_read, 4 * c.Hkv * L * (c.D + c.Dv) + 4 * c.B * c.Hq * c.D);
        assert_int_equal(cost.bytes_written, 4 * c.B * c.Hq * c.Dv);
    }
    /* SPEC's formula: uniform L, Dv = D gives 4 B Hq L D */
    int32_t ends[2] = {10, 10};
    mattn_tensor q2 = mattn_tensor_bthd(NULL, 2, 1, 4, 8), k2 = mattn_tensor_bthd(NULL, 2, 10, 2, 8);
    mattn_decode_cost cost;
    mattn_options o = mattn_options_default();
    assert_int_equal(mattn_ragged_decode_cost(&q2, &k2, &k2, NULL, ends, &o, &cost), MATTN_OK);
    assert_int_equal(cost.flops, 4 * 2 * 4 * 10 * 8);
    assert_int_equal(mattn_ragged_decode_cost(&q2, &k2, &k2, NULL, ends, &o, NULL), MATTN_ERR_ARG);
    /* Shapes only may describe any size: counts beyond int64 are an error,
     * never a wrapped number. 2^20 heads x 2^31 keys x 2^20 dims. */
    int32_t far[1] = {INT32_MAX};
    mattn_tensor qh = mattn_tensor_bthd(NULL, 1, 1, 1 << 20, 1 << 19);
    mattn_tensor kh = mattn_tensor_bthd(NULL, 1, INT32_MAX, 1, 1 << 19);
    assert_int_equal(mattn_ragged_decode_cost(&qh, &kh, &kh, NULL, far, &o, &cost),
                     MATTN_ERR_SHAPE);
    assert_non_null(strstr(mattn_last_error(), "overflow"));
    dcase_free(&c);
}

/* Each optional output alone (m, l, lse) equals the same row of a call that
 * asks for all three: l alone needs lse and m inside. */
static void test_optional_outputs(void **state)
{
    (void)state;
    dcase c = dcase_make(650, 5, 8, 2, 16, 16, 40);
    c.opts.sinks = NULL;
    int64_t n = c.B * c.Hq;
    mattn_tensor q = mattn_tensor_bthd(c.q, c.B, 1, c.Hq, c.D);
    mattn_tensor k = mattn_tensor_bthd(c.k, c.B, c.S, c.Hkv, c.D);
    mattn_tensor v = mattn_tensor_bthd(c.v, c.B, c.S, c.Hkv, c.Dv);
    float *o = tl_alloc(sizeof(float) * (size_t)(n * c.Dv)), *x = tl_alloc(sizeof(float) * (size_t)n);
    float *m = tl_alloc(sizeof(float) * (size_t)n), *l = tl_alloc(sizeof(float) * (size_t)n);
    float *lse = tl_alloc(sizeof(float) * (size_t)n);
    mattn_tensor to = mattn_tensor_bthd(o, c.B, 1, c.Hq, c.Dv);
    assert_int_equal(mattn_ragged_decode(&q, &k, &v, c.starts, c.ends, &to, m, l, lse, &c.opts),
                     MATTN_OK);
    for (int which = 0; which < 3; which++) {
        for (int64_t i = 0; i < n; i++)
            x[i] = NAN;
        int rc = mattn_ragged_decode(&q, &k, &v, c.starts, c.ends, &to, which == 0 ? x : NULL,
                                     which == 1 ? x : NULL, which == 2 ? x : NULL, &c.opts);
        assert_int_equal(rc, MATTN_OK);
        assert_memory_equal(x, which == 0 ? m : which == 1 ? l : lse, sizeof(float) * (size_t)n);
    }
    /* and l is what its name says: sum exp(s - m), with 0 for an empty row */
    dref_opts op = ref_opts(&c);
    double *ro = tl_alloc(sizeof(double) * (size_t)c.Dv);
    for (int64_t b = 0; b < c.B; b++)
        for (int64_t h = 0; h < c.Hq; h++) {
            dref_row r;
            dref_row_compute(&op, c.q + (b * c.Hq + h) * c.D, c.k + b * c.S * c.Hkv * c.D,
                             c.v + b * c.S * c.Hkv * c.Dv, 0, c.Hq, c.Hkv, c.D, c.Dv, h,
                             c.ends[b] - 1, c.starts[b], c.ends[b], ro, &r);
            dref_check_row("l only", b, 0, h, o + (b * c.Hq + h) * c.Dv, ro, c.Dv, NULL, NULL,
                           l + b * c.Hq + h, &r);
        }
    free(ro), free(o), free(x), free(m), free(l), free(lse);
    dcase_free(&c);
}

static void test_errors(void **state)
{
    (void)state;
    dcase c = dcase_make(700, 3, 4, 2, 8, 8, 12);
    mattn_tensor q = mattn_tensor_bthd(c.q, c.B, 1, c.Hq, c.D);
    mattn_tensor k = mattn_tensor_bthd(c.k, c.B, c.S, c.Hkv, c.D);
    mattn_tensor v = mattn_tensor_bthd(c.v, c.B, c.S, c.Hkv, c.Dv);
    float o[3 * 4 * 8], lse[12];
    mattn_tensor to = mattn_tensor_bthd(o, c.B, 1, c.Hq, c.Dv);
    mattn_options base = mattn_options_default(), x;
    uint8_t maskbuf[1] = {1};
    float biasbuf[1] = {0};
    int32_t seg[4] = {0};
#define EXPECT(code, call)                                                          \
    do {                                                                            \
        int rc_ = (call);                                                           \
        if (rc_ != (code))                                                          \
            fail_msg("%s: got %s, want %s (%s)", #call, mattn_err_name(rc_),        \
                     mattn_err_name(code), mattn_last_error());                     \
    } while (0)
    x = base, x.dropout_p = 0.1f;
    EXPECT(MATTN_ERR_UNSUPPORTED, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    x = base, x.mask = mattn_mask_dense(maskbuf, 1, 1, 1, 1);
    EXPECT(MATTN_ERR_UNSUPPORTED, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    x = base, x.bias = mattn_bias_dense(biasbuf, 1, 1, 1, 1);
    EXPECT(MATTN_ERR_UNSUPPORTED, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    x = base, x.q_segment_ids = seg, x.kv_segment_ids = seg;
    EXPECT(MATTN_ERR_UNSUPPORTED,
           mattn_ragged_decode(&q, &k, &v, c.starts, c.ends, &to, NULL, NULL, lse, &x));
    x = base, x.q_offset = 3;
    EXPECT(MATTN_ERR_UNSUPPORTED, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    x = base, x.block_q = 16;
    EXPECT(MATTN_ERR_UNSUPPORTED, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    x = base, x.softcap = -1.0f;
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    x = base, x.scale = NAN;
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    float bad_sinks[4] = {0, NAN, 0, 0};
    x = base, x.sinks = bad_sinks;
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    x = base, x.threads = -1;
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    x = base, x.threads = 2000000; /* the library's limit, not a stack overflow */
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, &x));
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &to, lse, NULL));
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(NULL, &k, &v, c.starts, c.ends, &to, lse, &base));
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, c.starts, NULL, &to, lse, &base));
    /* ranges: starts > ends, negative, beyond the cache */
    int32_t s_bad[3] = {0, 5, 0}, e_bad[3] = {12, 4, 12};
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, s_bad, e_bad, &to, lse, &base));
    int32_t s_neg[3] = {0, -1, 0}, e_ok[3] = {12, 4, 12};
    EXPECT(MATTN_ERR_ARG, mattn_ar_decode(&q, &k, &v, s_neg, e_ok, &to, lse, &base));
    int32_t e_far[3] = {12, 13, 12};
    EXPECT(MATTN_ERR_SHAPE, mattn_ar_decode(&q, &k, &v, NULL, e_far, &to, lse, &base));
    x = base, x.kv_offset = 2; /* cache holds [2, 14): keys from 0 are not there */
    EXPECT(MATTN_ERR_SHAPE, mattn_ar_decode(&q, &k, &v, NULL, e_ok, &to, lse, &x));
    /* shapes */
    mattn_tensor q3 = mattn_tensor_bthd(c.q, c.B, 1, 3, c.D), to3 = mattn_tensor_bthd(o, c.B, 1, 3, c.Dv);
    EXPECT(MATTN_ERR_SHAPE, mattn_ar_decode(&q3, &k, &v, c.starts, c.ends, &to3, lse, &base));
    mattn_tensor q2 = mattn_tensor_bthd(c.q, c.B, 2, c.Hq, c.D / 2);
    EXPECT(MATTN_ERR_SHAPE, mattn_ar_decode(&q2, &k, &v, c.starts, c.ends, &to, lse, &base));
    mattn_tensor vb = mattn_tensor_bthd(c.v, c.B, c.S - 1, c.Hkv, c.Dv);
    EXPECT(MATTN_ERR_SHAPE, mattn_ar_decode(&q, &k, &vb, c.starts, c.ends, &to, lse, &base));
    mattn_tensor ob = mattn_tensor_bthd(o, c.B, 1, c.Hq, c.Dv - 1);
    EXPECT(MATTN_ERR_SHAPE, mattn_ar_decode(&q, &k, &v, c.starts, c.ends, &ob, lse, &base));
    assert_true(strlen(mattn_last_error()) > 0);
#undef EXPECT
    dcase_free(&c);
}

/* One SIMD implementation of the inner loops against the portable ones and
 * a double dot, over row counts, key counts and dims that exercise every
 * tail and the fixed-size paths (4 keys, D = 64, 128, 256), for two kv heads
 * (head stride inside a key row) writing logits columns from j = 2. */
static void check_inner_loops(const mattn__dec_ops *ops)
{
    const char *name = ops->name;
    tl_rng r = tl_rng_make(800);
    const int64_t Ds[] = {1, 15, 16, 17, 64, 70, 128, 129, 256}, H = 2, j = 2, ld = 13;
    for (size_t di = 0; di < sizeof Ds / sizeof Ds[0]; di++)
        for (int64_t R = 1; R <= 9; R++)
            for (int64_t nk = 1; nk <= 9; nk++) {
                int64_t D = Ds[di], kh = D + 3, ks = H * kh + 5, HR = H * R;
                float *q = tl_alloc(sizeof(float) * (size_t)(HR * D));
                float *k = tl_alloc(sizeof(float) * (size_t)(nk * ks));
                float *s1 = tl_alloc(sizeof(float) * (size_t)(HR * ld));
                float *s2 = tl_alloc(sizeof(float) * (size_t)(HR * ld));
                float *a0 = tl_alloc(sizeof(float) * (size_t)(HR * D));
                float *a1 = tl_alloc(sizeof(float) * (size_t)(HR * D));
                float *a2 = tl_alloc(sizeof(float) * (size_t)(HR * D));
                tl_fill(&r, q, HR * D, 1.0);
                tl_fill(&r, k, nk * ks, 1.0);
                tl_fill(&r, a0, HR * D, 1.0);
                memcpy(a1, a0, sizeof(float) * (size_t)(HR * D));
                memcpy(a2, a0, sizeof(float) * (size_t)(HR * D));
                for (int64_t i = 0; i < HR * ld; i++)
                    s1[i] = s2[i] = 42.0f;
                mattn__dec_heads w1 = {.n = H, .R = R, .D = D, .Dv = D, .ld = ld, .q = q,
                                       .s = s1, .acc = a1};
                mattn__dec_heads w2 = w1;
                w2.s = s2, w2.acc = a2;
                /* a prefetch hint past the end must never be read */
                ops->dots(&w1, j, k, ks, kh, nk, k + nk * ks);
                mattn__dec_ops_portable.dots(&w2, j, k, ks, kh, nk, NULL);
                for (int64_t h = 0; h < H; h++)
                    for (int64_t x = 0; x < R; x++)
                        for (int64_t c = 0; c < ld; c++) {
                            int64_t row = h * R + x, i = c - j;
                            if (i < 0 || i >= nk) { /* nothing written outside the group */
                                assert_true(s1[row * ld + c] == 42.0f);
                                assert_true(s2[row * ld + c] == 42.0f);
                                continue;
                            }
                            double dot = 0, mag = 0;
                            for (int64_t d = 0; d < D; d++) {
                                double t = (double)q[row * D + d] * k[i * ks + h * kh + d];
                                dot += t, mag += fabs(t);
                            }
                            double tol = (D + 2) * mag / 16777216.0;
                            tl_assert_close(s1[row * ld + c], dot, tol, "%s dot D=%lld", name,
                                            (long long)D);
                            tl_assert_close(s2[row * ld + c], dot, tol, "portable dot D=%lld",
                                            (long long)D);
                        }
                /* accum with the logits s2 as weights and the k rows as values,
                 * against a double sum: nk + 1 fp32 roundings of terms up to mag. */
                w1.s = s2;
                ops->accum(&w1, j, k, ks, kh, nk, k + nk * ks);
                mattn__dec_ops_portable.accum(&w2, j, k, ks, kh, nk, NULL);
                for (int64_t h = 0; h < H; h++)
                    for (int64_t x = 0; x < R; x++)
                        for (int64_t d = 0; d < D; d++) {
                            int64_t row = h * R + x;
                            double want = a0[row * D + d], mag = fabs(want);
                            for (int64_t i = 0; i < nk; i++) {
                                double t = (double)s2[row * ld + j + i] * k[i * ks + h * kh + d];
                                want += t, mag += fabs(t);
                            }
                            double tol = 2.0 * (double)(nk + 1) * mag / 16777216.0;
                            tl_assert_close(a1[row * D + d], want, tol,
                                            "%s accum R=%lld nk=%lld", name, (long long)R,
                                            (long long)nk);
                            tl_assert_close(a2[row * D + d], want, tol,
                                            "portable accum R=%lld nk=%lld", (long long)R,
                                            (long long)nk);
                        }
                free(q), free(k), free(s1), free(s2), free(a0), free(a1), free(a2);
            }
}

/* Every SIMD implementation this CPU can run (the one the library picks
 * runs through the other tests too). */
static void test_inner_loops(void **state)
{
    (void)state;
    __builtin_cpu_init();
    int ran = 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        check_inner_loops(&mattn__dec_ops_avx512), ran++;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        check_inner_loops(&mattn__dec_ops_avx2), ran++;
    if (!ran)
        skip();
}

/* n floats (n >= 1) whose last one is the last before a PROT_NONE page, so
 * a read or write past any buffer faults; freed with unguard. */
static float *guarded(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), bytes = n * sizeof(float);
    size_t span = (bytes + pg - 1) / pg * pg;
    char *base = mmap(NULL, span + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    assert_true(base != MAP_FAILED);
    assert_int_equal(mprotect(base + span, pg, PROT_NONE), 0);
    return (float *)(base + span - bytes);
}

static void unguard(float *x, size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), bytes = n * sizeof(float);
    size_t span = (bytes + pg - 1) / pg * pg;
    munmap((char *)x + bytes - span, span + pg);
}

/* The contract at its edges: q, K, V rows packed with no slack, logits with
 * no spare column, every buffer ending at a PROT_NONE page, and the prefetch
 * hint pointing INTO one (it must never be dereferenced). A masked tail that
 * loads a whole vector, or a store past the group, faults here where the
 * padded buffers of test_inner_loops hide it. */
static void check_guarded(const mattn__dec_ops *ops)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    const float *hint = mmap(NULL, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(hint != MAP_FAILED);
    tl_rng rng = tl_rng_make(801);
    const int64_t Ds[] = {1, 7, 8, 9, 16, 17, 63, 64, 127, 128, 129, 256, 257};
    const int64_t Dvs[] = {1, 9, 24, 33, 128, 129};
    const int64_t H = 2, j = 3;
    for (size_t di = 0; di < sizeof Ds / sizeof Ds[0]; di++)
        for (size_t vi = 0; vi < sizeof Dvs / sizeof Dvs[0]; vi++)
            for (int64_t R = 1; R <= 5; R++)
                for (int64_t nk = 1; nk <= 9; nk += nk < 5 ? 1 : 4) {
                    const int64_t D = Ds[di], Dv = Dvs[vi], ld = j + nk;
                    const size_t nq = (size_t)(H * R * D), nkk = (size_t)(nk * H * D),
                                 nv = (size_t)(nk * H * Dv), ns = (size_t)(H * R * ld),
                                 na = (size_t)(H * R * Dv);
                    float *q = guarded(nq), *k = guarded(nkk), *v = guarded(nv);
                    float *sc = guarded(ns), *acc = guarded(na);
                    double *acc0 = malloc(sizeof(double) * na);
                    assert_non_null(acc0);
                    tl_fill(&rng, q, (int64_t)nq, 1.0);
                    tl_fill(&rng, k, (int64_t)nkk, 1.0);
                    tl_fill(&rng, v, (int64_t)nv, 1.0);
                    tl_fill(&rng, acc, (int64_t)na, 1.0);
                    for (size_t i = 0; i < na; i++)
                        acc0[i] = acc[i];
                    for (size_t i = 0; i < ns; i++)
                        sc[i] = 42.0f;
                    mattn__dec_heads w = {.n = H, .R = R, .D = D, .Dv = Dv, .ld = ld,
                                          .q = q, .s = sc, .acc = acc};
                    ops->dots(&w, j, k, H * D, D, nk, hint);
                    ops->accum(&w, j, v, H * Dv, Dv, nk, hint);
                    for (int64_t row = 0; row < H * R; row++) {
                        int64_t h = row / R;
                        for (int64_t c = 0; c < j; c++)
                            assert_true(sc[row * ld + c] == 42.0f);
                        for (int64_t i = 0; i < nk; i++) {
                            double dot = 0, mag = 0;
                            for (int64_t d = 0; d < D; d++) {
                                double t = (double)q[row * D + d] * k[(i * H + h) * D + d];
                                dot += t, mag += fabs(t);
                            }
                            tl_assert_close(sc[row * ld + j + i], dot,
                                            (D + 2) * mag / 16777216.0, "%s guarded dot D=%lld",
                                            ops->name, (long long)D);
                        }
                        for (int64_t d = 0; d < Dv; d++) {
                            double want = acc0[row * Dv + d], mag = fabs(want);
                            for (int64_t i = 0; i < nk; i++) {
                                double t = (double)sc[row * ld + j + i] * v[(i * H + h) * Dv + d];
                                want += t, mag += fabs(t);
                            }
                            tl_assert_close(acc[row * Dv + d], want,
                                            2.0 * (double)(nk + 1) * mag / 16777216.0,
                                            "%s guarded accum Dv=%lld R=%lld nk=%lld", ops->name,
                                            (long long)Dv, (long long)R, (long long)nk);
                        }
                    }
                    free(acc0);
                    unguard(q, nq), unguard(k, nkk), unguard(v, nv);
                    unguard(sc, ns), unguard(acc, na);
                }
    munmap((void *)hint, pg);
}

static void test_inner_loops_guarded(void **state)
{
    (void)state;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
        check_guarded(&mattn__dec_ops_avx512);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        check_guarded(&mattn__dec_ops_avx2);
    check_guarded(&mattn__dec_ops_portable);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heads_and_ranges),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_layouts_and_scale),
        cmocka_unit_test(test_split_kv_and_threads),
        cmocka_unit_test(test_many_and_long),
        cmocka_unit_test(test_empty_rows),
        cmocka_unit_test(test_cost),
        cmocka_unit_test(test_optional_outputs),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_inner_loops),
        cmocka_unit_test(test_inner_loops_guarded),
    };
    int failed = tl_run_spread("decode", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
