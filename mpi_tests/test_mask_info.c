/* Splash mask objects and mask info: exact block vectors for small cases,
 * every mask kind and combination against a brute-force classification from
 * the naive predicate, tile sharing, the O(blocks) build of lazy masks,
 * rectangle classification, and argument errors. Tests are spread over the
 * ranks of the job. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/testlib.h"
#include "test_splash_masks.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static mattn_splash_info *make_info(const mattn_splash_mask *m, int64_t T, int64_t S, int bq,
                                    int bkv, int64_t q_offset, int64_t kv_offset)
{
    mattn_splash_info_options io = mattn_splash_info_options_default();
    io.block_q = bq, io.block_kv = bkv, io.q_offset = q_offset, io.kv_offset = kv_offset;
    mattn_splash_info *info = NULL;
    int rc = mattn_splash_info_create(m, T, S, &io, &info);
    if (rc != MATTN_OK)
        fail_msg("mattn_splash_info_create: %s", mattn_last_error());
    return info;
}

/* Compares every block, tile and list of an info with the brute-force
 * classification of the naive predicate. */
static void check_info_brute(const tm *t, const mattn_splash_info *info, const char *what)
{
    mattn_splash_info_stats st;
    mattn_splash_info_describe(info, &st);
    int64_t bq = st.block_q, bkv = st.block_kv;
    assert_int_equal(st.q_blocks, (st.q_len + bq - 1) / bq);
    assert_int_equal(st.kv_blocks, (st.kv_len + bkv - 1) / bkv);
    int64_t counts[3] = {0, 0, 0};
    uint8_t *want = tl_alloc((size_t)(bq * bkv));
    for (int64_t h = 0; h < st.heads; h++) {
        int64_t mh = tm_heads(t) > 1 ? st.head_first + h : 0;
        for (int64_t qb = 0; qb < st.q_blocks; qb++) {
            const int32_t *kbs, *tls;
            int64_t n = mattn_splash_info_row(info, h, qb, &kbs, &tls), at = 0;
            assert_true(n >= 0);
            for (int64_t kb = 0; kb < st.kv_blocks; kb++) {
                int64_t tn = bq < st.q_len - qb * bq ? bq : st.q_len - qb * bq;
                int64_t jn = bkv < st.kv_len - kb * bkv ? bkv : st.kv_len - kb * bkv;
                int64_t ones = 0;
                memset(want, 0, (size_t)(bq * bkv));
                for (int64_t r = 0; r < tn; r++)
                    for (int64_t c = 0; c < jn; c++) {
                        int a = tm_allowed(t, mh, st.q_offset + qb * bq + r,
                                           st.kv_offset + kb * bkv + c);
                        want[r * bkv + c] = (uint8_t)a;
                        ones += a;
                    }
                mattn_splash_block expect = ones == 0         ? MATTN_SPLASH_EMPTY
                                            : ones == tn * jn ? MATTN_SPLASH_FULL
                                                              : MATTN_SPLASH_PARTIAL;
                mattn_splash_block got;
                int64_t tile;
                assert_int_equal(mattn_splash_info_block(info, h, qb, kb, &got, &tile), MATTN_OK);
                if (got != expect)
                    fail_msg("%s: head %lld block (%lld, %lld) is %d, expected %d", what,
                             (long long)h, (long long)qb, (long long)kb, got, expect);
                counts[expect]++;
                if (expect == MATTN_SPLASH_PARTIAL) {
                    const uint8_t *tp = mattn_splash_info_tile(info, tile);
                    assert_non_null(tp);
                    if (memcmp(tp, want, (size_t)(bq * bkv)) != 0)
                        fail_msg("%s: head %lld block (%lld, %lld) tile %lld differs", what,
                                 (long long)h, (long long)qb, (long long)kb, (long long)tile);
                } else {
                    assert_int_equal(tile, -1);
                }
                /* The compact list holds exactly the non-empty blocks, in order. */
                if (expect != MATTN_SPLASH_EMPTY) {
                    assert_true(at < n);
                    assert_int_equal(kbs[at], kb);
                    assert_int_equal(tls[at], expect == MATTN_SPLASH_FULL ? -1 : tile);
                    at++;
                }
            }
            assert_int_equal(at, n);
        }
    }
    assert_int_equal(st.empty, counts[0]);
    assert_int_equal(st.partial, counts[1]);
    assert_int_equal(st.full, counts[2]);
    /* Identical tiles are stored once. */
    for (int64_t a = 0; a < st.tiles; a++)
        for (int64_t b = a + 1; b < st.tiles; b++)
            if (memcmp(mattn_splash_info_tile(info, a), mattn_splash_info_tile(info, b),
                       (size_t)(bq * bkv)) == 0)
                fail_msg("%s: tiles %lld and %lld are identical", what, (long long)a,
                         (long long)b);
    assert_null(mattn_splash_info_tile(info, st.tiles));
    assert_null(mattn_splash_info_tile(info, -1));
    free(want);
}

/* ------------------------------------------------------------------ exact vectors */

static void test_causal_64_in_16(void **state)
{
    (void)state;
    mattn_splash_mask *m;
    assert_int_equal(mattn_splash_mask_causal(0, &m), MATTN_OK);
    mattn_splash_info *info = make_info(m, 64, 64, 16, 16, 0, 0);
    mattn_splash_info_stats st;
    mattn_splash_info_describe(info, &st);
    assert_int_equal(st.q_blocks, 4);
    assert_int_equal(st.kv_blocks, 4);
    assert_int_equal(st.heads, 1);
    assert_int_equal(st.tiles, 1); /* one diagonal tile shared by the 4 diagonal blocks */
    assert_int_equal(st.partial, 4);
    assert_int_equal(st.full, 6);
    assert_int_equal(st.empty, 6);
    for (int qb = 0; qb < 4; qb++)
        for (int kb = 0; kb < 4; kb++) {
            mattn_splash_block s;
            int64_t tile;
            assert_int_equal(mattn_splash_info_block(info, 0, qb, kb, &s, &tile), MATTN_OK);
            if (kb < qb) {
                assert_int_equal(s, MATTN_SPLASH_FULL);
                assert_int_equal(tile, -1);
            } else if (kb == qb) {
                assert_int_equal(s, MATTN_SPLASH_PARTIAL);
                assert_int_equal(tile, 0);
            } else {
                assert_int_equal(s, MATTN_SPLASH_EMPTY);
            }
        }
    const uint8_t *t = mattn_splash_info_tile(info, 0);
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            assert_int_equal(t[r * 16 + c], c <= r);
    /* q block 2 walks kv blocks 0, 1 (full) and 2 (the tile). */
    const int32_t *kbs, *tls;
    assert_int_equal(mattn_splash_info_row(info, 0, 2, &kbs, &tls), 3);
    assert_int_equal(kbs[0], 0), assert_int_equal(kbs[1], 1), assert_int_equal(kbs[2], 2);
    assert_int_equal(tls[0], -1), assert_int_equal(tls[1], -1), assert_int_equal(tls[2], 0);
    mattn_splash_info_free(info);
    mattn_splash_mask_free(m);
}

static void test_causal_shapes(void **state)
{
    (void)state;
    tm *t = tm_causal(0);
    mattn_splash_mask *m = tm_build(t);
    /* Unequal blocks: a 16-row q block meets a 32-key block in two ways. */
    mattn_splash_info *info = make_info(m, 64, 64, 16, 32, 0, 0);
    check_info_brute(t, info, "causal 16x32");
    mattn_splash_info_stats st;
    mattn_splash_info_describe(info, &st);
    assert_int_equal(st.tiles, 2);
    mattn_splash_info_free(info);
    /* Any length, aligned equal blocks: still one tile. */
    info = make_info(m, 4096, 4096, 64, 64, 0, 0);
    mattn_splash_info_describe(info, &st);
    assert_int_equal(st.tiles, 1);
    assert_int_equal(st.partial, 64);
    assert_int_equal(st.full, 64 * 63 / 2);
    mattn_splash_info_free(info);
    /* Bottom-right alignment and block sizes that do not divide lengths. */
    info = make_info(m, 45, 70, 16, 24, 25, 0);
    check_info_brute(t, info, "causal bottom-right 45x70");
    mattn_splash_info_free(info);
    info = make_info(m, 1, 300, 0, 0, 299, 0); /* decode: one query row */
    check_info_brute(t, info, "causal T=1");
    mattn_splash_info_describe(info, &st);
    assert_int_equal(st.block_q, 1);
    assert_int_equal(st.full, 2); /* qp = 299 sees all 300 keys: blocks of 256 and 44 */
    assert_int_equal(st.partial, 0);
    mattn_splash_info_free(info);
    mattn_splash_mask_free(m);
    tm_free_all();
}

/* ------------------------------------------------------------------ brute force */

typedef struct geom {
    int64_t T, S, q_offset, kv_offset;
    int bq, bkv;
} geom;

static const geom GEOMS[] = {
    {64, 64, 0, 0, 16, 16},    {70, 53, 0, 0, 16, 8},   {53, 70, 17, 0, 8, 16},
    {37, 41, -5, 3, 7, 9},     {1, 40, 39, 0, 1, 8},    {40, 1, 0, 0, 8, 1},
    {1, 1, 0, 0, 0, 0},        {30, 0, 0, 0, 8, 8},     {96, 96, 1000, 990, 32, 16},
    {50, 50, -40, -33, 12, 5},  {20, 16, 4, 5, 10, 8},
};
#define N_GEOMS (sizeof GEOMS / sizeof GEOMS[0])

static void check_all_geoms(const tm *t, const char *name)
{
    mattn_splash_mask *m = tm_build(t);
    for (size_t g = 0; g < N_GEOMS; g++) {
        const geom *G = &GEOMS[g];
        mattn_splash_info *info = make_info(m, G->T, G->S, G->bq, G->bkv, G->q_offset, G->kv_offset);
        char what[128];
        snprintf(what, sizeof what, "%s geometry %zu", name, g);
        check_info_brute(t, info, what);
        mattn_splash_info_free(info);
    }
    mattn_splash_mask_free(m);
}

static void test_band_kinds(void **state)
{
    (void)state;
    check_all_geoms(tm_full(), "full");
    static const int64_t offsets[] = {0, 3, -2, 40, -60};
    for (size_t i = 0; i < 5; i++)
        check_all_geoms(tm_causal(offsets[i]), "causal");
    static const int64_t w[][2] = {{5, 0}, {0, 5}, {3, 7}, {-1, 4}, {4, -1}, {0, 0}, {-1, -1}, {200, 200}};
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++)
        check_all_geoms(tm_local(w[i][0], w[i][1]), "local");
    static const int64_t chunks[] = {1, 5, 8, 16, 33, 1000};
    for (size_t i = 0; i < 6; i++)
        check_all_geoms(tm_chunked(chunks[i]), "chunked");
    tm_free_all();
}

static void test_dense_kinds(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(11);
    uint8_t *rand_bits = tm_random_bits(&r, 120 * 120, 0.5);
    check_all_geoms(tm_dense(rand_bits, 120, 120, 0, 0), "dense random");
    check_all_geoms(tm_dense(rand_bits, 30, 50, 10, -4), "dense placed");
    /* Block-sparse: 8x8 cells either all on or all off, so most blocks are
     * EMPTY or FULL at block size 8 and PARTIAL at other sizes. */
    uint8_t *cells = tl_alloc(120 * 120);
    for (int i = 0; i < 120; i++)
        for (int j = 0; j < 120; j++)
            cells[i * 120 + j] = (uint8_t)(((i / 8) * 7 + (j / 8) * 3) % 5 < 2);
    check_all_geoms(tm_dense(cells, 120, 120, 0, 0), "dense cells");
    uint8_t *zeros = tl_alloc(120 * 120);
    check_all_geoms(tm_dense(zeros, 120, 120, 0, 0), "dense zeros");
    free(rand_bits), free(cells), free(zeros);
    tm_free_all();
}

static void test_combinations(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(12);
    uint8_t *bits = tm_random_bits(&r, 120 * 120, 0.7);
    tm *dense = tm_dense(bits, 120, 120, 0, 0);
    check_all_geoms(tm_pair(TM_AND, tm_causal(0), tm_local(6, 0)), "causal & local");
    check_all_geoms(tm_pair(TM_AND, tm_chunked(6), tm_local(2, 1)), "chunked & local");
    check_all_geoms(tm_pair(TM_AND, tm_chunked(4), tm_chunked(6)), "chunked(4) & chunked(6)");
    check_all_geoms(tm_pair(TM_OR, tm_local(2, 2), tm_chunked(16)), "local | chunked");
    check_all_geoms(tm_pair(TM_OR, tm_causal(-10), dense), "causal(-10) | dense");
    check_all_geoms(tm_pair(TM_AND, dense, tm_causal(0)), "dense & causal");
    check_all_geoms(tm_pair(TM_AND, tm_local(3, 3), tm_causal(-5)), "empty band");
    /* Allowed pairs (4c + 3, 4c) only: with geometry {20, 16, 4, 5, 10, 8},
     * block (0, 0) = q [4, 13] x k [5, 12] has empty first and last common
     * chunks and a non-empty interior one. */
    check_all_geoms(tm_pair(TM_AND, tm_chunked(4), tm_causal(-3)), "chunked(4) & causal(-3)");
    check_all_geoms(tm_pair(TM_AND, tm_pair(TM_OR, tm_local(1, 1), tm_chunked(7)),
                            tm_pair(TM_OR, tm_causal(-3), tm_full())),
                    "nested");
    /* An OR whose parts are partial but whose union is full, and an AND whose
     * parts are partial but disjoint: resolved exactly through the tile. */
    check_all_geoms(tm_pair(TM_OR, tm_causal(0), tm_local(0, -1)), "causal | anti-causal");
    check_all_geoms(tm_pair(TM_AND, tm_causal(-1), tm_local(0, -1)), "strict-causal & anti");
    free(bits);
    tm_free_all();
}

static void test_per_head(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(13);
    uint8_t *bits = tm_random_bits(&r, 100 * 100, 0.3);
    tm *heads[4] = {tm_causal(0), tm_local(4, 4), tm_dense(bits, 100, 100, 0, 0), tm_causal(0)};
    tm *t = tm_per_head(heads, 4);
    check_all_geoms(t, "per-head");
    tm *both = tm_pair(TM_AND, t, tm_chunked(9));
    check_all_geoms(both, "per-head & chunked");
    mattn_splash_mask *m = tm_build(both);
    assert_int_equal(mattn_splash_mask_heads(m), 4);
    /* A sub-range of heads: what a tensor-parallel rank builds. */
    mattn_splash_info_options io = mattn_splash_info_options_default();
    io.head_first = 1, io.heads = 2, io.block_q = 8, io.block_kv = 16;
    mattn_splash_info *info = NULL;
    assert_int_equal(mattn_splash_info_create(m, 60, 70, &io, &info), MATTN_OK);
    mattn_splash_info_stats st;
    mattn_splash_info_describe(info, &st);
    assert_int_equal(st.heads, 2);
    assert_int_equal(st.head_first, 1);
    check_info_brute(both, info, "per-head heads [1, 3)");
    mattn_splash_info_free(info);
    /* Heads 0 and 3 are both causal & chunked: their tiles are shared. */
    io.head_first = 0, io.heads = 0;
    assert_int_equal(mattn_splash_info_create(m, 64, 64, &io, &info), MATTN_OK);
    mattn_splash_info_describe(info, &st);
    assert_int_equal(st.heads, 4);
    const int32_t *k0, *t0, *k3, *t3;
    for (int qb = 0; qb < 8; qb++) {
        int64_t n0 = mattn_splash_info_row(info, 0, qb, &k0, &t0);
        assert_int_equal(mattn_splash_info_row(info, 3, qb, &k3, &t3), n0);
        for (int64_t i = 0; i < n0; i++)
            assert_int_equal(t0[i], t3[i]);
    }
    assert_int_equal(mattn_splash_info_row(info, 4, 0, &k0, &t0), -1);
    mattn_splash_info_free(info);
    mattn_splash_mask_free(m);
    free(bits);
    tm_free_all();
}

/* ------------------------------------------------------------------ cost */

/* A lazily described mask is classified per block, never per element: at
 * T = S = 2^20 (10^12 pairs; an element-wise build would take minutes) the
 * info of 1024 x 1024 blocks is built in a fraction of a second, and the
 * signature cache materialises each distinct tile once. A chunk that does
 * not align with the blocks cuts them in many distinct ways (lcm(3000, 128)
 * / 128 = 375 phases): more tiles, each still built once. */
static void test_lazy_cost(void **state)
{
    (void)state;
    const int64_t N = (int64_t)1 << 20;
    mattn_splash_mask *masks[5];
    assert_int_equal(mattn_splash_mask_causal(0, &masks[0]), MATTN_OK);
    assert_int_equal(mattn_splash_mask_local(512, 512, &masks[1]), MATTN_OK);
    assert_int_equal(mattn_splash_mask_chunked(4096, &masks[2]), MATTN_OK);
    assert_int_equal(mattn_splash_mask_and(masks[0], masks[1], &masks[3]), MATTN_OK);
    assert_int_equal(mattn_splash_mask_chunked(3000, &masks[4]), MATTN_OK);
    for (int i = 0; i < 5; i++) {
        int blk = i < 4 ? 1024 : 128;
        int64_t len = i < 4 ? N : N / 8;
        double t0 = now();
        mattn_splash_info *info = make_info(masks[i], len, len, blk, blk, 0, 0);
        double took = now() - t0;
        mattn_splash_info_stats st;
        mattn_splash_info_describe(info, &st);
        print_message("mask %d: %lld tiles, %lld partial, %lld full, built in %.3f s\n", i,
                      (long long)st.tiles, (long long)st.partial, (long long)st.full, took);
        assert_int_equal(st.q_blocks, 1024);
        if (i == 0) {
            assert_int_equal(st.tiles, 1);
            assert_int_equal(st.partial, 1024);
            assert_int_equal(st.full, 1024 * 1023 / 2);
        }
        assert_true(st.tiles <= (i < 4 ? 8 : 3 * 375));
        if (took > 20.0)
            fail_msg("mask %d: building the info took %.1f s", i, took);
        mattn_splash_info_free(info);
        mattn_splash_mask_free(masks[i]);
    }
}

/* ------------------------------------------------------------------ rectangles, points */

static void test_classify_rectangles(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(14);
    uint8_t *bits = tm_random_bits(&r, 80 * 80, 0.5);
    tm *hs[2] = {tm_causal(0), tm_local(2, 2)};
    tm *cases[] = {tm_causal(0),  tm_causal(-7), tm_local(3, 9), tm_local(-1, 0), tm_chunked(6),
                   tm_full(),     tm_dense(bits, 80, 80, -10, 5),
                   tm_pair(TM_AND, tm_chunked(5), tm_local(1, 1)),
                   tm_pair(TM_OR, tm_causal(-20), tm_chunked(10)),
                   tm_pair(TM_AND, tm_chunked(4), tm_chunked(6)), tm_per_head(hs, 2)};
    int exact[] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1}; /* per-head: exact for one head */
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        mattn_splash_mask *m = tm_build(cases[c]);
        int64_t nh = tm_heads(cases[c]);
        for (int it = 0; it < 400; it++) {
            int64_t qa = tl_int(&r, 100) - 30, ka = tl_int(&r, 100) - 30;
            int64_t qn = 1 + tl_int(&r, 40), kn = 1 + tl_int(&r, 40);
            int64_t head = nh > 1 ? tl_int(&r, nh + 1) - 1 : 0;
            int64_t ones = 0, total = 0;
            for (int64_t h = head < 0 ? 0 : head; h <= (head < 0 ? nh - 1 : head); h++)
                for (int64_t i = qa; i < qa + qn; i++)
                    for (int64_t j = ka; j < ka + kn; j++)
                        ones += tm_allowed(cases[c], h, i, j), total++;
            mattn_splash_block want = ones == 0       ? MATTN_SPLASH_EMPTY
                                      : ones == total ? MATTN_SPLASH_FULL
                                                      : MATTN_SPLASH_PARTIAL;
            mattn_splash_block got;
            assert_int_equal(mattn_splash_mask_classify(m, head, qa, qn, ka, kn, &got), MATTN_OK);
            /* EMPTY and FULL are never wrong; single kinds are exact. */
            int ok = got == want || (got == MATTN_SPLASH_PARTIAL && !(exact[c] && head >= 0));
            if (!ok)
                fail_msg("case %zu head %lld rect (%lld+%lld, %lld+%lld): got %d, expected %d", c,
                         (long long)head, (long long)qa, (long long)qn, (long long)ka,
                         (long long)kn, got, want);
        }
        mattn_splash_block s;
        assert_int_equal(mattn_splash_mask_classify(m, 0, 5, 0, 5, 10, &s), MATTN_OK);
        assert_int_equal(s, MATTN_SPLASH_EMPTY); /* an empty rectangle */
        mattn_splash_mask_free(m);
    }
    /* Only an interior chunk holds allowed pairs (see test_combinations). */
    mattn_splash_mask *m = tm_build(tm_pair(TM_AND, tm_chunked(4), tm_causal(-3)));
    mattn_splash_block s;
    assert_int_equal(mattn_splash_mask_classify(m, 0, 4, 10, 5, 8, &s), MATTN_OK);
    assert_int_equal(s, MATTN_SPLASH_PARTIAL);
    assert_int_equal(mattn_splash_mask_classify(m, 0, 4, 2, 5, 3, &s), MATTN_OK);
    assert_int_equal(s, MATTN_SPLASH_EMPTY);
    mattn_splash_mask_free(m);
    free(bits);
    tm_free_all();
}

static void test_point_predicate(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(15);
    uint8_t *bits = tm_random_bits(&r, 50 * 60, 0.5);
    tm *hs[3] = {tm_chunked(7), tm_dense(bits, 50, 60, 3, -2), tm_causal(2)};
    tm *t = tm_pair(TM_OR, tm_per_head(hs, 3), tm_local(1, 0));
    mattn_splash_mask *m = tm_build(t);
    for (int it = 0; it < 20000; it++) {
        int64_t h = tl_int(&r, 3), qp = tl_int(&r, 90) - 20, kp = tl_int(&r, 90) - 20;
        assert_int_equal(mattn_splash_mask_allowed(m, h, qp, kp), tm_allowed(t, h, qp, kp));
    }
    assert_true(mattn_splash_mask_allowed(m, 3, 0, 0) < 0); /* head out of range */
    mattn_splash_mask_free(m);
    free(bits);
    tm_free_all();
}

/* ------------------------------------------------------------------ objects, errors */

static void test_references(void **state)
{
    (void)state;
    /* Operands may be freed right after combining; the combination (and a
     * combination of it) keeps working. ASan runs catch a use after free. */
    mattn_splash_mask *a, *b, *ab, *abc, *c;
    uint8_t *bits = tl_alloc(32 * 32);
    memset(bits, 1, 32 * 32);
    assert_int_equal(mattn_splash_mask_chunked(4, &a), MATTN_OK);
    assert_int_equal(mattn_splash_mask_dense(bits, 32, 32, &b), MATTN_OK);
    assert_int_equal(mattn_splash_mask_or(a, b, &ab), MATTN_OK);
    mattn_splash_mask_free(a);
    mattn_splash_mask_free(b);
    assert_int_equal(mattn_splash_mask_causal(0, &c), MATTN_OK);
    assert_int_equal(mattn_splash_mask_and(ab, c, &abc), MATTN_OK);
    mattn_splash_mask_free(ab);
    mattn_splash_mask_free(c);
    assert_int_equal(mattn_splash_mask_allowed(abc, 0, 10, 3), 1);
    assert_int_equal(mattn_splash_mask_allowed(abc, 0, 3, 10), 0);
    assert_int_equal(mattn_splash_mask_allowed(abc, 0, 40, 3), 0); /* outside dense, other chunk */
    mattn_splash_mask *same;
    mattn_splash_mask *one[1] = {abc};
    assert_int_equal(mattn_splash_mask_per_head(one, 1, &same), MATTN_OK);
    mattn_splash_mask_free(abc);
    assert_int_equal(mattn_splash_mask_allowed(same, 0, 10, 3), 1);
    mattn_splash_mask_free(same);
    mattn_splash_mask_free(NULL);
    mattn_splash_info_free(NULL);
    free(bits);
}

static void expect_error(int rc, int code, const char *what)
{
    if (rc != code)
        fail_msg("%s: returned %d (%s), expected %d", what, rc, mattn_err_name(rc), code);
    assert_true(strlen(mattn_last_error()) > 0);
}

static void test_errors(void **state)
{
    (void)state;
    mattn_splash_mask *m = NULL, *c = NULL, *ph = NULL, *ph3 = NULL;
    uint8_t bits[4] = {1, 0, 1, 1};
    expect_error(mattn_splash_mask_causal(0, NULL), MATTN_ERR_ARG, "causal NULL out");
    expect_error(mattn_splash_mask_causal((int64_t)1 << 61, &m), MATTN_ERR_ARG, "causal huge");
    expect_error(mattn_splash_mask_local(-2, 3, &m), MATTN_ERR_ARG, "local -2");
    expect_error(mattn_splash_mask_local(3, -5, &m), MATTN_ERR_ARG, "local right -5");
    expect_error(mattn_splash_mask_chunked(0, &m), MATTN_ERR_ARG, "chunk 0");
    expect_error(mattn_splash_mask_chunked(-3, &m), MATTN_ERR_ARG, "chunk -3");
    expect_error(mattn_splash_mask_dense(NULL, 2, 2, &m), MATTN_ERR_ARG, "dense NULL");
    expect_error(mattn_splash_mask_dense(bits, -1, 2, &m), MATTN_ERR_SHAPE, "dense rows -1");
    expect_error(mattn_splash_mask_dense_ex(bits, 2, 2, -1, 0, 0, &m), MATTN_ERR_ARG,
                 "dense stride -1");
    expect_error(mattn_splash_mask_and(NULL, NULL, &m), MATTN_ERR_ARG, "and NULL");
    expect_error(mattn_splash_mask_per_head(NULL, 2, &m), MATTN_ERR_ARG, "per-head NULL");
    assert_int_equal(mattn_splash_mask_causal(0, &c), MATTN_OK);
    mattn_splash_mask *two[2] = {c, NULL};
    expect_error(mattn_splash_mask_per_head(two, 2, &m), MATTN_ERR_ARG, "per-head NULL entry");
    expect_error(mattn_splash_mask_per_head(two, 0, &m), MATTN_ERR_ARG, "per-head 0 heads");
    two[1] = c;
    assert_int_equal(mattn_splash_mask_per_head(two, 2, &ph), MATTN_OK);
    mattn_splash_mask *nest[2] = {ph, c};
    expect_error(mattn_splash_mask_per_head(nest, 2, &m), MATTN_ERR_ARG, "nested per-head");
    mattn_splash_mask *three[3] = {c, c, c};
    assert_int_equal(mattn_splash_mask_per_head(three, 3, &ph3), MATTN_OK);
    expect_error(mattn_splash_mask_or(ph, ph3, &m), MATTN_ERR_SHAPE, "2 heads | 3 heads");
    assert_null(m);

    mattn_splash_info_options io = mattn_splash_info_options_default();
    mattn_splash_info *info = NULL;
    expect_error(mattn_splash_info_create(NULL, 4, 4, &io, &info), MATTN_ERR_ARG, "info NULL mask");
    expect_error(mattn_splash_info_create(c, 4, 4, NULL, &info), MATTN_ERR_ARG, "info NULL opts");
    expect_error(mattn_splash_info_create(c, -1, 4, &io, &info), MATTN_ERR_SHAPE, "info T -1");
    io.block_q = -1;
    expect_error(mattn_splash_info_create(c, 4, 4, &io, &info), MATTN_ERR_ARG, "info block -1");
    io.block_q = 0, io.head_first = 2;
    expect_error(mattn_splash_info_create(ph, 4, 4, &io, &info), MATTN_ERR_SHAPE,
                 "info heads beyond the mask");
    io.head_first = 1, io.heads = 2;
    expect_error(mattn_splash_info_create(ph, 4, 4, &io, &info), MATTN_ERR_SHAPE,
                 "info heads [1, 3) of 2");
    io.head_first = 0, io.heads = 0, io.q_offset = (int64_t)1 << 62;
    expect_error(mattn_splash_info_create(c, 4, 4, &io, &info), MATTN_ERR_ARG, "info offset");
    assert_null(info);
    io.q_offset = 0;
    assert_int_equal(mattn_splash_info_create(c, 4, 4, &io, &info), MATTN_OK);
    mattn_splash_block s;
    expect_error(mattn_splash_info_block(info, 0, 1, 0, &s, NULL), MATTN_ERR_ARG, "block out of range");
    expect_error(mattn_splash_info_block(info, 1, 0, 0, &s, NULL), MATTN_ERR_ARG, "head out of range");
    expect_error(mattn_splash_mask_classify(c, 0, 0, -1, 0, 1, &s), MATTN_ERR_ARG, "classify count");
    expect_error(mattn_splash_mask_classify(ph, 2, 0, 1, 0, 1, &s), MATTN_ERR_ARG, "classify head");
    mattn_splash_info_free(info);
    mattn_splash_mask_free(c);
    mattn_splash_mask_free(ph);
    mattn_splash_mask_free(ph3);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_causal_64_in_16),
        cmocka_unit_test(test_causal_shapes),
        cmocka_unit_test(test_band_kinds),
        cmocka_unit_test(test_dense_kinds),
        cmocka_unit_test(test_combinations),
        cmocka_unit_test(test_per_head),
        cmocka_unit_test(test_lazy_cost),
        cmocka_unit_test(test_classify_rectangles),
        cmocka_unit_test(test_point_predicate),
        cmocka_unit_test(test_references),
        cmocka_unit_test(test_errors),
    };
    int failed = tl_run_spread("mask_info", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
