/* Single-rank forward operators (vanilla, flash, sdpa) against the float64
 * reference, for every option of SPEC §2-4, their combinations, every
 * layout, and the edge cases. Tests are spread over the ranks of the job. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/cases.h"

static const char *const OPS[] = {"vanilla", "flash", "sdpa"};
#define N_OPS 3

/* Every operator, in layouts BTHD and BHTD (plus padded strides), must match. */
static void check_all_ops(const tc_problem *p, const char *layouts)
{
    for (int op = 0; op < N_OPS; op++)
        for (const char *l = layouts; *l; l++)
            assert_int_equal(tc_run_and_check(OPS[op], p, *l, 1), MATTN_OK);
}

/* ------------------------------------------------------------------ heads, shapes */

static void test_mha(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(1, 2, 37, 53, 3, 3, 16, 16);
    check_all_ops(&p, "thp");
    tc_free(&p);
}

static void test_gqa_mqa_dv(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(2, 2, 29, 41, 6, 2, 24, 40); /* GQA, Dv != D */
    check_all_ops(&p, "thp");
    tc_free(&p);
    p = tc_seeded(3, 1, 33, 33, 4, 1, 13, 7); /* MQA, D not a multiple of 8 */
    check_all_ops(&p, "thpf");
    tc_free(&p);
}

static void test_fused_qkv(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(4, 2, 45, 45, 4, 2, 16, 16);
    p.causal = 1;
    check_all_ops(&p, "f");
    tc_free(&p);
}

static void test_scale(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(5, 1, 20, 30, 2, 1, 16, 16);
    p.scale = 0.37;
    check_all_ops(&p, "t");
    p.scale = -1.25; /* any finite non-zero scale is honoured */
    check_all_ops(&p, "t");
    tc_free(&p);
}

static void test_lengths(void **state)
{
    (void)state;
    /* T = 1, S = 1, T != S, lengths around block sizes. */
    static const int64_t shapes[][2] = {{1, 1}, {1, 300}, {300, 1}, {129, 257},
                                        {257, 129}, {255, 513}, {64, 64}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        tc_problem p = tc_seeded(6 + i, 1, shapes[i][0], shapes[i][1], 2, 1, 8, 8);
        check_all_ops(&p, "t");
        p.causal = 1;
        p.q_offset = p.S - p.T; /* bottom-right so no row is empty */
        check_all_ops(&p, "t");
        tc_free(&p);
    }
}

static void test_empty_sizes(void **state)
{
    (void)state;
    /* S = 0: every row is fully masked. B = 0 and T = 0: nothing to do. */
    tc_problem p = tc_seeded(20, 2, 5, 0, 2, 2, 8, 8);
    check_all_ops(&p, "t");
    tc_free(&p);
    p = tc_seeded(21, 0, 5, 5, 2, 2, 8, 8);
    check_all_ops(&p, "t");
    tc_free(&p);
    p = tc_seeded(22, 1, 0, 5, 2, 2, 8, 8);
    check_all_ops(&p, "t");
    tc_free(&p);
}

/* K and V rows 2^31 + 8 floats apart (rows of a huge mapped buffer): a
 * legal layout BLAS cannot address with an int leading dimension, so every
 * operator must copy the rows rather than pass a truncated stride (vanilla
 * did, and returned OK with a wrong answer). Only the touched pages exist. */
static void test_huge_kv_stride(void **state)
{
    (void)state;
    enum { S = 3, D = 4, H = 2 };
    const int64_t ss = ((int64_t)1 << 31) + 8;
    size_t bytes = sizeof(float) * (size_t)(ss * (S - 1) + H * D);
    float *big = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (big == MAP_FAILED)
        skip(); /* no address space for it here */
    float q[H * D], kv[S][H * D];
    tl_rng r = tl_rng_make(77);
    tl_fill(&r, q, H * D, 1.0);
    tl_fill(&r, &kv[0][0], S * H * D, 1.0);
    for (int j = 0; j < S; j++)
        memcpy(big + j * ss, kv[j], sizeof kv[j]);
    mattn_tensor tq = mattn_tensor_bthd(q, 1, 1, H, D);
    mattn_tensor tk = {big, 1, S, H, D, ss * S, ss, D}; /* K and V share the rows */
    const double scale = 1.0 / sqrt((double)D);
    for (int op = 0; op < N_OPS; op++) {
        float o[H * D], lse[H];
        mattn_tensor to = mattn_tensor_bthd(o, 1, 1, H, D);
        mattn_options opts = mattn_options_default();
        int rc = !strcmp(OPS[op], "vanilla") ? mattn_vanilla_forward(&tq, &tk, &tk, &to, lse,
                                                                     NULL, &opts)
                 : !strcmp(OPS[op], "flash") ? mattn_flash_forward(&tq, &tk, &tk, &to, lse, &opts)
                                             : mattn_sdpa_forward(&tq, &tk, &tk, &to, lse, &opts,
                                                                  NULL);
        assert_int_equal(rc, MATTN_OK);
        for (int h = 0; h < H; h++) {
            double s[S], m = -INFINITY, l = 0;
            for (int j = 0; j < S; j++) {
                s[j] = 0;
                for (int d = 0; d < D; d++)
                    s[j] += (double)q[h * D + d] * kv[j][h * D + d] * scale;
                m = s[j] > m ? s[j] : m;
            }
            for (int j = 0; j < S; j++)
                l += exp(s[j] - m);
            tl_assert_close(lse[h], m + log(l), 1e-5, "%s lse", OPS[op]);
            for (int d = 0; d < D; d++) {
                double want = 0;
                for (int j = 0; j < S; j++)
                    want += exp(s[j] - m) / l * kv[j][h * D + d];
                tl_assert_close(o[h * D + d], want, 1e-5, "%s o", OPS[op]);
            }
        }
    }
    munmap(big, bytes);
}

/* ------------------------------------------------------------------ masks */

static void test_causal_offsets(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(30, 2, 70, 70, 2, 1, 16, 16);
    p.causal = 1;
    check_all_ops(&p, "th");
    tc_free(&p);
    p = tc_seeded(31, 1, 40, 100, 2, 2, 16, 16);
    p.causal = 1;
    p.q_offset = 60; /* bottom-right: decode/chunked-prefill alignment */
    check_all_ops(&p, "t");
    p.q_offset = 0; /* top-left with T < S: later keys never seen */
    check_all_ops(&p, "t");
    p.q_offset = 1000, p.kv_offset = 990; /* both shifted */
    check_all_ops(&p, "t");
    p.q_offset = -5, p.kv_offset = 0; /* first rows see nothing */
    check_all_ops(&p, "t");
    tc_free(&p);
}

static void test_window(void **state)
{
    (void)state;
    static const int64_t w[][2] = {{5, 0}, {0, 5}, {3, 7}, {-1, 4}, {4, -1}, {0, 0}, {200, 200}};
    tc_problem p = tc_seeded(40, 1, 90, 110, 2, 1, 16, 16);
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        p.window_left = w[i][0], p.window_right = w[i][1];
        p.causal = 0;
        check_all_ops(&p, "t");
        p.causal = 1;
        check_all_ops(&p, "t");
    }
    tc_free(&p);
}

static void test_chunk(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(50, 2, 77, 77, 2, 2, 8, 8);
    p.chunk = 8;
    check_all_ops(&p, "t");
    p.causal = 1; /* chunked causal (splash ChunkedCausalMask) */
    check_all_ops(&p, "t");
    p.chunk = 1; /* each query sees only itself */
    check_all_ops(&p, "t");
    p.chunk = 32, p.q_offset = 13, p.kv_offset = 5;
    check_all_ops(&p, "t");
    p.q_offset = -20, p.kv_offset = -33; /* negative positions: floor division */
    check_all_ops(&p, "t");
    tc_free(&p);
}

static void test_segments(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(60);
    tc_problem p = tc_make(&r, 2, 81, 81, 2, 1, 16, 16, 1.0);
    tc_add_segments(&p);
    tc_random_segments(&r, p.q_seg, 2, 81, 1000);
    memcpy(p.kv_seg, p.q_seg, sizeof(int32_t) * 2 * 81);
    check_all_ops(&p, "th");
    p.causal = 1;
    check_all_ops(&p, "t");
    /* kv ids differ from q ids (cross attention with packing) */
    tc_random_segments(&r, p.kv_seg, 2, 81, 3);
    tc_random_segments(&r, p.q_seg, 2, 81, 3);
    p.causal = 0;
    check_all_ops(&p, "t");
    tc_free(&p);
}

static void test_mask_broadcast(void **state)
{
    (void)state;
    static const int64_t dims[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (size_t c = 0; c < 4; c++) {
        tl_rng r = tl_rng_make(70 + c);
        tc_problem p = tc_make(&r, 2, 33, 47, 4, 2, 16, 16, 1.0);
        tc_add_mask(&p, dims[c][0], dims[c][1]);
        int64_t n = p.mask_b * p.mask_h * p.T * p.S;
        for (int64_t x = 0; x < n; x++)
            p.mask[x] = (uint8_t)(tl_int(&r, 3) != 0 ? 1 + tl_int(&r, 200) : 0);
        check_all_ops(&p, "th");
        tc_free(&p);
    }
}

static void test_bias_broadcast(void **state)
{
    (void)state;
    static const int64_t dims[][2] = {{1, 1}, {2, 1}, {1, 4}, {2, 4}};
    for (size_t c = 0; c < 4; c++) {
        tl_rng r = tl_rng_make(80 + c);
        tc_problem p = tc_make(&r, 2, 31, 43, 4, 1, 16, 16, 1.0);
        tc_random_bias(&r, &p, dims[c][0], dims[c][1], 3.0);
        check_all_ops(&p, "th");
        tc_free(&p);
    }
}

/* ------------------------------------------------------------------ logits */

static void test_sinks(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(90);
    tc_problem p = tc_make(&r, 2, 40, 50, 4, 2, 16, 16, 1.0);
    p.sinks = tl_alloc(sizeof(float) * 4);
    p.sinks[0] = 0.5f, p.sinks[1] = -3.0f, p.sinks[2] = 4.0f, p.sinks[3] = -INFINITY;
    check_all_ops(&p, "t");
    p.causal = 1, p.q_offset = -3; /* first rows masked: lse = sink, o = 0 */
    check_all_ops(&p, "t");
    tc_free(&p);
}

static void test_softcap(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(100);
    tc_problem p = tc_make(&r, 1, 45, 60, 2, 1, 32, 16, 3.0); /* logits up to ~50 */
    p.softcap = 5.0;
    check_all_ops(&p, "t");
    p.softcap = 50.0, p.causal = 1;
    check_all_ops(&p, "t");
    tc_free(&p);
}

static void test_huge_logits(void **state)
{
    (void)state;
    /* Small-integer q and k with scale 1: every dot product is exact, and
     * logits reach ~1e4, where a naive exp overflows. */
    tl_rng r = tl_rng_make(110);
    tc_problem p = tc_make(&r, 1, 30, 70, 2, 1, 16, 16, 1.0);
    tc_exact_logits(&r, &p);
    check_all_ops(&p, "t");
    p.scale = -1.0;
    p.causal = 1;
    check_all_ops(&p, "t");
    tc_free(&p);
}

/* ------------------------------------------------------------------ dropout */

static void test_dropout(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(120, 2, 37, 45, 4, 2, 16, 16);
    p.dropout_p = 0.3f;
    p.seed = 1234;
    check_all_ops(&p, "th");
    p.dropout_p = 0.9f, p.seed = 99, p.causal = 1;
    check_all_ops(&p, "t");
    p.drop_b0 = 3, p.drop_h0 = 8; /* a shard's global indices */
    check_all_ops(&p, "t");
    tc_free(&p);
}

static void test_dropout_identical_across_ops(void **state)
{
    (void)state;
    /* The same entries are dropped by vanilla and flash: with 1-thread runs
     * the outputs agree far below the reference tolerance. */
    tc_problem p = tc_seeded(121, 1, 64, 64, 2, 2, 16, 16);
    p.dropout_p = 0.5f, p.seed = 7;
    mattn_options o = tc_options(&p);
    mattn_tensor q = mattn_tensor_bthd(p.q, 1, 64, 2, 16), k = mattn_tensor_bthd(p.k, 1, 64, 2, 16),
                 v = mattn_tensor_bthd(p.v, 1, 64, 2, 16);
    float *o1 = tl_alloc(sizeof(float) * 64 * 2 * 16), *o2 = tl_alloc(sizeof(float) * 64 * 2 * 16);
    mattn_tensor t1 = mattn_tensor_bthd(o1, 1, 64, 2, 16), t2 = mattn_tensor_bthd(o2, 1, 64, 2, 16);
    assert_int_equal(mattn_vanilla_forward(&q, &k, &v, &t1, NULL, NULL, &o), MATTN_OK);
    assert_int_equal(mattn_flash_forward(&q, &k, &v, &t2, NULL, &o), MATTN_OK);
    for (int x = 0; x < 64 * 2 * 16; x++)
        tl_assert_close(o2[x], o1[x], 1e-5, "flash vs vanilla with dropout, element %d", x);
    /* And dropout changes the answer: the test above is not vacuous. */
    o.dropout_p = 0.0f;
    assert_int_equal(mattn_flash_forward(&q, &k, &v, &t2, NULL, &o), MATTN_OK);
    double diff = 0;
    for (int x = 0; x < 64 * 2 * 16; x++)
        diff += fabs(o2[x] - o1[x]);
    assert_true(diff > 1.0);
    free(o1);
    free(o2);
    tc_free(&p);
}

/* The keep rule is u >= p exactly: with p set to one element's own u the
 * element is kept, and with the next float above p it is dropped. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void test_dropout_threshold_edge(void **state)
{
    (void)state;
    /* One query, one head, two keys with v = (1) and (0): o = kept weight of
     * key 0 (times 1/(1-p)). Equal logits, so the weight is exactly 1/2. */
    float q[1] = {0.0f}, k[2] = {0.0f, 0.0f}, v[2] = {1.0f, 0.0f}, out[1];
    uint64_t seed = 77;
    uint32_t u24 = (uint32_t)(mix64(mix64(mix64(mix64(seed ^ 0) ^ 0) ^ 0) ^ 0) >> 40);
    mattn_tensor tq = mattn_tensor_bthd(q, 1, 1, 1, 1), tk = mattn_tensor_bthd(k, 1, 2, 1, 1),
                 tv = mattn_tensor_bthd(v, 1, 2, 1, 1), to = mattn_tensor_bthd(out, 1, 1, 1, 1);
    mattn_options o = mattn_options_default();
    o.dropout_seed = seed;
    o.dropout_p = (float)u24 / 16777216.0f; /* exact: u24 < 2^24 */
    for (int op = 0; op < 2; op++) {
        int rc = op ? mattn_flash_forward(&tq, &tk, &tv, &to, NULL, &o)
                    : mattn_vanilla_forward(&tq, &tk, &tv, &to, NULL, NULL, &o);
        assert_int_equal(rc, MATTN_OK);
        tl_assert_close(out[0], 0.5 / (1.0 - (double)o.dropout_p), 1e-6, "u == p keeps (op %d)", op);
    }
    o.dropout_p = nextafterf(o.dropout_p, 1.0f);
    for (int op = 0; op < 2; op++) {
        int rc = op ? mattn_flash_forward(&tq, &tk, &tv, &to, NULL, &o)
                    : mattn_vanilla_forward(&tq, &tk, &tv, &to, NULL, NULL, &o);
        assert_int_equal(rc, MATTN_OK);
        assert_true(out[0] == 0.0f);
    }
}

/* ------------------------------------------------------------------ combinations */

/* Random problems with random combinations of every option, every operator,
 * random block sizes and threads: the kernels' block edges get exercised. */
static void test_random_combinations(void **state)
{
    (void)state;
    static const tc_random_spec spec = {.max_len = 150, .max_dim = 40, .max_span = 40,
                                        .kv_offset = 1, .mask = 1, .bias = 1, .scale = 1};
    for (int iter = 0; iter < 24; iter++) {
        tl_rng r = tl_rng_make(1000 + iter);
        tc_problem p = tc_random_problem(&r, &spec, (uint64_t)iter);
        const int64_t B = p.B, T = p.T, S = p.S, Hkv = p.Hkv, D = p.D, Dv = p.Dv;
        char layout = "thp"[tl_int(&r, 3)];
        for (int op = 0; op < N_OPS; op++)
            assert_int_equal(tc_run_and_check(OPS[op], &p, layout, 1), MATTN_OK);

        /* flash with odd block sizes and 2 threads */
        mattn_options o = tc_options(&p);
        o.block_q = 1 + (int)tl_int(&r, 20);
        o.block_kv = 1 + (int)tl_int(&r, 40);
        o.threads = 2;
        float *out = tl_alloc(sizeof(float) * (size_t)(B * T * p.Hq * Dv + 1));
        float *lse = tl_alloc(sizeof(float) * (size_t)(B * p.Hq * T + 1));
        mattn_tensor tq = mattn_tensor_bthd(p.q, B, T, p.Hq, D), tk = mattn_tensor_bthd(p.k, B, S, Hkv, D),
                     tv = mattn_tensor_bthd(p.v, B, S, Hkv, Dv), to = mattn_tensor_bthd(out, B, T, p.Hq, Dv);
        assert_int_equal(mattn_flash_forward(&tq, &tk, &tv, &to, lse, &o), MATTN_OK);
        size_t nrow = (size_t)(B * T * p.Hq), nl = (size_t)(B * p.Hq * T);
        double *ro = tl_alloc(sizeof(double) * (nrow * (size_t)Dv + 1)), *rl = tl_alloc(sizeof(double) * (nl + 1));
        double *tol = tl_alloc(sizeof(double) * (nrow + 1)), *tl = tl_alloc(sizeof(double) * (nl + 1));
        tc_reference(&p, ro, rl, NULL, tol, tl, NULL);
        char what[80];
        snprintf(what, sizeof what, "flash blocks (%d, %d) threads 2, iter %d", o.block_q, o.block_kv, iter);
        tc_check_o(what, &p, out, ro, tol);
        tc_check_lse(what, &p, lse, rl, tl);
        free(out), free(lse), free(ro), free(rl), free(tol), free(tl);
        tc_free(&p);
    }
}

static void test_everything_at_once(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(130);
    tc_problem p = tc_make(&r, 2, 96, 160, 6, 2, 20, 12, 1.0);
    tc_every_option(&r, &p); /* q_offset = S - T = 64 */
    check_all_ops(&p, "thp");
    assert_int_equal(tc_run_and_check("flash", &p, 't', 2), MATTN_OK);
    tc_free(&p);
}

/* ------------------------------------------------------------------ outputs */

static void test_fully_masked_rows(void **state)
{
    (void)state;
    /* Rows 0-4 see nothing (causal with q before every key); row 5 only
     * masked by the boolean mask; padding rows by segment -1. */
    tl_rng r = tl_rng_make(140);
    tc_problem p = tc_make(&r, 1, 20, 20, 2, 2, 8, 8, 1.0);
    p.causal = 1, p.q_offset = -5;
    tc_add_mask(&p, 1, 1);
    memset(p.mask, 1, 20 * 20);
    memset(p.mask + 5 * 20, 0, 20);
    check_all_ops(&p, "t");
    /* Check exact zeros and -inf directly too. */
    mattn_options o = tc_options(&p);
    float out[20 * 2 * 8], lse[2 * 20];
    mattn_tensor q = mattn_tensor_bthd(p.q, 1, 20, 2, 8), k = mattn_tensor_bthd(p.k, 1, 20, 2, 8),
                 v = mattn_tensor_bthd(p.v, 1, 20, 2, 8), to = mattn_tensor_bthd(out, 1, 20, 2, 8);
    assert_int_equal(mattn_flash_forward(&q, &k, &v, &to, lse, &o), MATTN_OK);
    for (int i = 0; i <= 5; i++)
        for (int h = 0; h < 2; h++) {
            assert_true(lse[h * 20 + i] == -INFINITY);
            for (int d = 0; d < 8; d++)
                assert_true(out[(i * 2 + h) * 8 + d] == 0.0f);
        }
    tc_free(&p);
}

static void test_lse_optional(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(150, 1, 16, 16, 2, 2, 8, 8);
    mattn_options o = tc_options(&p);
    float out[16 * 2 * 8];
    mattn_tensor q = mattn_tensor_bthd(p.q, 1, 16, 2, 8), k = mattn_tensor_bthd(p.k, 1, 16, 2, 8),
                 v = mattn_tensor_bthd(p.v, 1, 16, 2, 8), to = mattn_tensor_bthd(out, 1, 16, 2, 8);
    assert_int_equal(mattn_flash_forward(&q, &k, &v, &to, NULL, &o), MATTN_OK);
    assert_int_equal(mattn_vanilla_forward(&q, &k, &v, &to, NULL, NULL, &o), MATTN_OK);
    assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, NULL, &o, NULL), MATTN_OK);
    tc_free(&p);
}

static void test_vanilla_weights(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(160);
    tc_problem p = tc_make(&r, 2, 23, 31, 4, 2, 16, 16, 1.0);
    p.causal = 1, p.q_offset = 3;
    tc_random_sinks(&r, &p, 1.0);
    p.dropout_p = 0.4f; /* weights are reported before dropout */
    mattn_options o = tc_options(&p);
    size_t nw = 2 * 4 * 23 * 31;
    float *w = tl_alloc(sizeof(float) * nw), *out = tl_alloc(sizeof(float) * 2 * 23 * 4 * 16);
    double *rw = tl_alloc(sizeof(double) * nw), *tw = tl_alloc(sizeof(double) * 2 * 4 * 23);
    mattn_tensor q = mattn_tensor_bthd(p.q, 2, 23, 4, 16), k = mattn_tensor_bthd(p.k, 2, 31, 2, 16),
                 v = mattn_tensor_bthd(p.v, 2, 31, 2, 16), to = mattn_tensor_bthd(out, 2, 23, 4, 16);
    assert_int_equal(mattn_vanilla_forward(&q, &k, &v, &to, NULL, w, &o), MATTN_OK);
    tc_reference(&p, NULL, NULL, rw, NULL, NULL, tw);
    for (size_t x = 0; x < nw; x++)
        tl_assert_close(w[x], rw[x], tw[x / 31] * rw[x] + 0x1p-24, "weight %zu", x);
    tc_free(&p);
    free(w), free(out), free(rw), free(tw);
}

static void test_sdpa_reports_kernel(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(170, 1, 200, 200, 2, 2, 16, 16);
    mattn_options o = tc_options(&p);
    float *out = tl_alloc(sizeof(float) * 200 * 2 * 16);
    mattn_tensor q = mattn_tensor_bthd(p.q, 1, 200, 2, 16), k = mattn_tensor_bthd(p.k, 1, 200, 2, 16),
                 v = mattn_tensor_bthd(p.v, 1, 200, 2, 16), to = mattn_tensor_bthd(out, 1, 200, 2, 16);
    mattn_kernel chosen = (mattn_kernel)-1;
    assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, NULL, &o, &chosen), MATTN_OK);
    assert_int_equal(chosen, MATTN_KERNEL_FLASH);
    assert_string_equal(mattn_kernel_name(chosen), "flash");
    /* a tiny problem goes to vanilla */
    q.seq = k.seq = v.seq = to.seq = 8;
    assert_int_equal(mattn_sdpa_forward(&q, &k, &v, &to, NULL, &o, &chosen), MATTN_OK);
    assert_int_equal(chosen, MATTN_KERNEL_VANILLA);
    free(out);
    tc_free(&p);
}

static void test_threads(void **state)
{
    (void)state;
    tc_problem p = tc_seeded(180, 2, 300, 300, 4, 2, 32, 32);
    p.causal = 1;
    for (int op = 0; op < N_OPS; op++) {
        assert_int_equal(tc_run_and_check(OPS[op], &p, 't', 2), MATTN_OK);
        assert_int_equal(tc_run_and_check(OPS[op], &p, 't', 0), MATTN_OK); /* all CPUs */
    }
    tc_free(&p);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mha),
        cmocka_unit_test(test_gqa_mqa_dv),
        cmocka_unit_test(test_fused_qkv),
        cmocka_unit_test(test_scale),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_empty_sizes),
        cmocka_unit_test(test_huge_kv_stride),
        cmocka_unit_test(test_causal_offsets),
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_chunk),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_mask_broadcast),
        cmocka_unit_test(test_bias_broadcast),
        cmocka_unit_test(test_sinks),
        cmocka_unit_test(test_softcap),
        cmocka_unit_test(test_huge_logits),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_dropout_identical_across_ops),
        cmocka_unit_test(test_dropout_threshold_edge),
        cmocka_unit_test(test_random_combinations),
        cmocka_unit_test(test_everything_at_once),
        cmocka_unit_test(test_fully_masked_rows),
        cmocka_unit_test(test_lse_optional),
        cmocka_unit_test(test_vanilla_weights),
        cmocka_unit_test(test_sdpa_reports_kernel),
        cmocka_unit_test(test_threads),
    };
    int failed = tl_run_spread("forward", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
