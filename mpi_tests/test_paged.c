/* Paged attention on one rank: prefill, decode, chunked-prefill and empty
 * sequences mixed in one call over shuffled pages (unused page-table entries
 * hold garbage, unused slots NaN), against the float64 reference; GQA/MQA,
 * window, soft cap, sinks, D != Dv, page sizes 1..16; the cache write (slot
 * < 0 skips, bad slots change nothing); and bad metadata -> error, not a read
 * out of bounds (run under ASan by `make sanitize`). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/testlib.h"
#include "test_decode_ref.h"

/* Runs the paged forward and checks it; returns its status. */
static int run_paged(const char *what, const pcase *c, const mattn_paged_kv *kv, int threads)
{
    float *o = tl_alloc(sizeof(float) * (size_t)(c->T * c->Hq * c->Dv + 1));
    float *lse = tl_alloc(sizeof(float) * (size_t)(c->T * c->Hq + 1));
    for (int64_t i = 0; i < c->T * c->Hq * c->Dv; i++)
        o[i] = NAN;
    for (int64_t i = 0; i < c->T * c->Hq; i++)
        lse[i] = NAN;
    mattn_tensor q = mattn_tensor_bthd(c->q, 1, c->T, c->Hq, c->D);
    mattn_tensor to = mattn_tensor_bthd(o, 1, c->T, c->Hq, c->Dv);
    mattn_options opts = c->opts;
    opts.threads = threads;
    int rc = mattn_paged_forward(&q, kv, c->cu, &to, lse, &opts);
    if (rc == MATTN_OK) {
        int64_t piece = opts.block_kv > 0 ? opts.block_kv : 2048, maxlen = 0;
        for (int64_t s = 0; s < c->ns; s++)
            maxlen = c->total[s] > maxlen ? c->total[s] : maxlen;
        pcase_check(what, c, o, lse, maxlen / piece + 3);
    }
    free(o), free(lse);
    return rc;
}

static void test_mixed_batches(void **state)
{
    (void)state;
    /* prefill 37, decode over 100, empty, chunked prefill (3 of 5), length 1,
     * decode over 300 */
    const int64_t total[] = {37, 100, 0, 5, 1, 300}, qn[] = {37, 1, 0, 3, 1, 1};
    const int64_t heads[][2] = {{4, 4}, {8, 2}, {4, 1}, {2, 1}};
    const int64_t page_sizes[] = {1, 3, 16};
    float sinks[8] = {0.3f, -1.0f, 2.0f, 0.0f, -INFINITY, 1.0f, 4.0f, -3.0f};
    uint64_t seed = 10;
    for (size_t hi = 0; hi < 4; hi++)
        for (size_t pi = 0; pi < 3; pi++) {
            pcase c = pcase_make(seed++, 6, total, qn, heads[hi][0], heads[hi][1], 24, 40);
            switch (pi) {
            case 1: /* JAX ragged-paged window=8 is (7, 0) here */
                c.opts.window_left = 7, c.opts.window_right = 0, c.opts.softcap = 3.0f;
                break;
            case 2:
                c.opts.sinks = sinks, c.opts.block_kv = 32, c.opts.chunk = 64;
                break;
            default:
                break;
            }
            mattn_paged_kv kv;
            pcase_pages(&c, page_sizes[pi], NULL, NULL, seed * 7, (int)(pi % 2), &kv);
            char what[96];
            snprintf(what, sizeof what, "Hq=%lld Hkv=%lld page_size=%lld", (long long)c.Hq,
                     (long long)c.Hkv, (long long)page_sizes[pi]);
            for (int th = 1; th <= 2; th++) {
                int rc = run_paged(what, &c, &kv, th);
                if (rc != MATTN_OK)
                    fail_msg("%s: %s (%s)", what, mattn_err_name(rc), mattn_last_error());
            }
            pcase_pages_free(&kv);
            pcase_free(&c);
        }
}

/* Paged and the contiguous ragged decode see the same keys: compare both to
 * the reference on the same decode-only batch (paged within 1 chunk split of
 * ragged's rounding, both within the reference's bound). */
static void test_paged_matches_ragged(void **state)
{
    (void)state;
    const int64_t total[] = {64, 17, 1, 129}, qn[] = {1, 1, 1, 1};
    pcase c = pcase_make(20, 4, total, qn, 8, 2, 32, 32);
    mattn_paged_kv kv;
    pcase_pages(&c, 16, NULL, NULL, 21, 1, &kv);
    assert_int_equal(run_paged("decode-only", &c, &kv, 2), MATTN_OK);
    /* the same problem as a contiguous cache [4, 129, Hkv, D] */
    int64_t S = 129;
    float *k = tl_alloc(sizeof(float) * (size_t)(4 * S * 2 * 32));
    float *v = tl_alloc(sizeof(float) * (size_t)(4 * S * 2 * 32));
    int32_t ends[4];
    for (int64_t s = 0; s < 4; s++) {
        memcpy(k + s * S * 64, c.k[s], sizeof(float) * (size_t)(total[s] * 64));
        memcpy(v + s * S * 64, c.v[s], sizeof(float) * (size_t)(total[s] * 64));
        ends[s] = (int32_t)total[s];
    }
    float o1[4 * 8 * 32], o2[4 * 8 * 32], l1[32], l2[32];
    mattn_tensor q = mattn_tensor_bthd(c.q, 4, 1, 8, 32), tk = mattn_tensor_bthd(k, 4, S, 2, 32);
    mattn_tensor tv = mattn_tensor_bthd(v, 4, S, 2, 32), to = mattn_tensor_bthd(o1, 4, 1, 8, 32);
    assert_int_equal(mattn_ar_decode(&q, &tk, &tv, NULL, ends, &to, l1, &c.opts), MATTN_OK);
    mattn_tensor qp = mattn_tensor_bthd(c.q, 1, 4, 8, 32), top = mattn_tensor_bthd(o2, 1, 4, 8, 32);
    assert_int_equal(mattn_paged_forward(&qp, &kv, c.cu, &top, l2, &c.opts), MATTN_OK);
    for (int i = 0; i < 4 * 8 * 32; i++)
        tl_assert_close(o1[i], o2[i], 1e-5, "paged vs ragged o[%d]", i);
    free(k), free(v);
    pcase_pages_free(&kv);
    pcase_free(&c);
}

static void test_cache_write(void **state)
{
    (void)state;
    const int64_t npages = 4, ps = 3, H = 2, D = 5, Dv = 7, T = 6;
    float kp[4 * 3 * 2 * 5], vp[4 * 3 * 2 * 7], kn[6 * 2 * 5], vn[6 * 2 * 7];
    tl_rng r = tl_rng_make(30);
    tl_fill(&r, kn, T * H * D, 1.0);
    tl_fill(&r, vn, T * H * Dv, 1.0);
    for (size_t i = 0; i < sizeof kp / sizeof kp[0]; i++)
        kp[i] = -100.0f;
    for (size_t i = 0; i < sizeof vp / sizeof vp[0]; i++)
        vp[i] = -100.0f;
    mattn_tensor tkp = mattn_tensor_bthd(kp, npages, ps, H, D);
    mattn_tensor tvp = mattn_tensor_bthd(vp, npages, ps, H, Dv);
    mattn_tensor tkn = mattn_tensor_bthd(kn, 1, T, H, D), tvn = mattn_tensor_bthd(vn, 1, T, H, Dv);
    /* tokens 1 and 4 are padding; slots in pages 3, 0, 2 in any order */
    int32_t slots[6] = {10, -1, 0, 7, -3, 11};
    assert_int_equal(mattn_paged_cache_write(&tkn, &tvn, slots, &tkp, &tvp), MATTN_OK);
    int written[12] = {0};
    for (int t = 0; t < T; t++) {
        if (slots[t] < 0)
            continue;
        written[slots[t]] = 1;
        assert_memory_equal(kp + slots[t] * H * D, kn + t * H * D, sizeof(float) * H * D);
        assert_memory_equal(vp + slots[t] * H * Dv, vn + t * H * Dv, sizeof(float) * H * Dv);
    }
    for (int sl = 0; sl < 12; sl++)
        if (!written[sl]) /* every other slot untouched */
            for (int x = 0; x < H * D; x++)
                assert_true(kp[sl * H * D + x] == -100.0f);
    /* a bad slot anywhere: error, and nothing is written */
    float before[sizeof kp / sizeof kp[0]];
    memcpy(before, kp, sizeof kp);
    int32_t bad[6] = {1, 2, 12, 3, 4, 5};
    assert_int_equal(mattn_paged_cache_write(&tkn, &tvn, bad, &tkp, &tvp), MATTN_ERR_ARG);
    assert_memory_equal(before, kp, sizeof kp);
    assert_int_equal(mattn_paged_cache_write(&tkn, &tvn, NULL, &tkp, &tvp), MATTN_ERR_ARG);
    mattn_tensor wrong = mattn_tensor_bthd(kn, 1, T, H, D - 1);
    assert_int_equal(mattn_paged_cache_write(&wrong, &tvn, slots, &tkp, &tvp), MATTN_ERR_SHAPE);
}

static void test_bad_metadata(void **state)
{
    (void)state;
    const int64_t total[] = {20, 9}, qn[] = {2, 1};
    pcase c = pcase_make(40, 2, total, qn, 4, 2, 8, 8);
    mattn_paged_kv kv;
    pcase_pages(&c, 4, NULL, NULL, 41, 0, &kv);
    int32_t *table = (int32_t *)kv.page_table, *lens = (int32_t *)kv.kv_lens;
    assert_int_equal(run_paged("baseline", &c, &kv, 1), MATTN_OK);
#define EXPECT(code)                                                                     \
    do {                                                                                 \
        int rc_ = run_paged("bad", &c, &kv, 1);                                          \
        if (rc_ != (code))                                                               \
            fail_msg("line %d: got %s, want %s (%s)", __LINE__, mattn_err_name(rc_),     \
                     mattn_err_name(code), mattn_last_error());                          \
    } while (0)
    int64_t npages = kv.k_pages.batch, mp = kv.max_pages;
    int32_t saved = table[1];
    table[1] = (int32_t)npages; /* a used page id past the pool */
    EXPECT(MATTN_ERR_ARG);
    table[1] = -1;
    EXPECT(MATTN_ERR_ARG);
    table[1] = saved;
    saved = table[mp + 2];
    table[mp + 2] = (int32_t)npages + 100; /* seq 1 uses pages 0..2 (9 tokens, size 4) */
    EXPECT(MATTN_ERR_ARG);
    table[mp + 2] = saved;
    lens[1] = (int32_t)(mp * 4 + 1); /* more tokens than the table can name */
    EXPECT(MATTN_ERR_SHAPE);
    lens[1] = -1;
    EXPECT(MATTN_ERR_SHAPE);
    lens[1] = 0; /* q_len 1 > kv_len 0 */
    EXPECT(MATTN_ERR_SHAPE);
    assert_non_null(strstr(mattn_last_error(), "q_len=1 is above kv_len=0"));
    lens[1] = 9;
    c.cu[0] = -1; /* would start sequence 0's queries before q */
    EXPECT(MATTN_ERR_SHAPE);
    c.cu[0] = 0;
    c.cu[1] = 3, c.cu[2] = 2; /* decreasing */
    EXPECT(MATTN_ERR_SHAPE);
    c.cu[1] = 2, c.cu[2] = 4; /* does not end at total_q */
    EXPECT(MATTN_ERR_SHAPE);
    c.cu[2] = 3;
    int32_t starts[2] = {1, 0}, totals[2] = {21, 9};
    kv.kv_starts = starts, kv.kv_totals = totals; /* part of a sequence on one rank */
    EXPECT(MATTN_ERR_ARG);
    kv.kv_starts = NULL, kv.kv_totals = NULL;
    c.opts.kv_offset = 4;
    EXPECT(MATTN_ERR_UNSUPPORTED);
    c.opts.kv_offset = 0, c.opts.dropout_p = 0.5f;
    EXPECT(MATTN_ERR_UNSUPPORTED);
    c.opts.dropout_p = 0.0f;
    assert_int_equal(run_paged("restored", &c, &kv, 1), MATTN_OK);
    assert_int_equal(mattn_paged_forward(NULL, &kv, c.cu, NULL, NULL, &c.opts), MATTN_ERR_ARG);
#undef EXPECT
    pcase_pages_free(&kv);
    pcase_free(&c);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_batches),
        cmocka_unit_test(test_paged_matches_ragged),
        cmocka_unit_test(test_cache_write),
        cmocka_unit_test(test_bad_metadata),
    };
    int failed = tl_run_spread("paged", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
