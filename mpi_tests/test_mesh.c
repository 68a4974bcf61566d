/* The mesh: shapes, coordinates, the split rules (uneven, contiguous and
 * zigzag), shard geometry, shape inference, scatter/gather round trips, and
 * that bad arguments on some ranks give the same error on every rank
 * instead of a hang. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/testlib.h"

static void test_shapes_and_coords(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank();
    /* Every factorisation dp * tp * sp = size. */
    for (int dp = 1; dp <= size; dp++)
        for (int tp = 1; tp <= size / dp; tp++) {
            if (size % (dp * tp) != 0)
                continue;
            int sp = size / (dp * tp);
            mattn_mesh *m = NULL;
            assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, dp, tp, sp, &m), MATTN_OK);
            assert_non_null(m);
            int a, b, c, d, e, f;
            mattn_mesh_shape(m, &a, &b, &c);
            assert_int_equal(a, dp);
            assert_int_equal(b, tp);
            assert_int_equal(c, sp);
            mattn_mesh_coords(m, &d, &e, &f);
            assert_int_equal(f, rank % sp); /* sp fastest */
            assert_int_equal(e, (rank / sp) % tp);
            assert_int_equal(d, rank / (sp * tp));
            assert_int_equal(mattn_mesh_rank(m), rank);
            assert_int_equal(mattn_mesh_size(m), size);
            /* the mesh communicator is a duplicate, not the caller's */
            int cmp;
            MPI_Comm_compare(mattn_mesh_comm(m), MPI_COMM_WORLD, &cmp);
            assert_int_equal(cmp, MPI_CONGRUENT);
            mattn_mesh_free(m);
        }
}

static void test_bad_shape_everywhere(void **state)
{
    (void)state;
    int size = tl_size();
    mattn_mesh *m = (mattn_mesh *)1;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size + 1, &m), MATTN_ERR_ARG);
    assert_null(m);
    assert_non_null(strstr(mattn_last_error(), "ranks"));
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 0, 1, size, &m), MATTN_ERR_ARG);
    assert_int_equal(mattn_mesh_create(MPI_COMM_NULL, 1, 1, 1, &m), MATTN_ERR_ARG);
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, NULL), MATTN_ERR_ARG);
}

static void test_bad_shape_on_one_rank(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank();
    /* The last rank alone passes a wrong shape: every rank must return the
     * same error, with the culprit's message. */
    int sp = rank == size - 1 ? size + 2 : size;
    mattn_mesh *m = NULL;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, sp, &m), MATTN_ERR_ARG);
    assert_null(m);
    /* The same message on every rank (compare a hash of it). */
    unsigned long h = 5381, lo, hi;
    for (const char *c = strstr(mattn_last_error(), "mesh"); c && *c; c++)
        h = h * 33 + (unsigned char)*c;
    MPI_Allreduce(&h, &lo, 1, MPI_UNSIGNED_LONG, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&h, &hi, 1, MPI_UNSIGNED_LONG, MPI_MAX, MPI_COMM_WORLD);
    assert_true(lo == hi);
    assert_non_null(strstr(mattn_last_error(), "mesh"));
}

static void test_split_rule(void **state)
{
    (void)state;
    /* first n % p parts get one more; parts tile [0, n) in order */
    for (int64_t n = 0; n < 40; n++)
        for (int p = 1; p <= 7; p++) {
            int64_t next = 0;
            for (int i = 0; i < p; i++) {
                int64_t s, c;
                mattn_split(n, p, i, &s, &c);
                assert_int_equal(s, next);
                assert_int_equal(c, n / p + (i < n % p ? 1 : 0));
                next = s + c;
            }
            assert_int_equal(next, n);
        }
}

/* ------------------------------------------------------------------ layouts */

/* SPEC §7 written out: chunk c of m chunks of n rows (the first n % m one
 * longer); contiguous part i = chunk i of sp, zigzag = chunks i and
 * 2sp-1-i of 2sp, in that order. Fills the global row of each local row. */
static int64_t t_rows(int64_t n, int parts, int idx, mattn_seq_layout layout, int64_t *rows)
{
    int m = layout == MATTN_SEQ_ZIGZAG ? 2 * parts : parts;
    int chunks[2] = {idx, 2 * parts - 1 - idx}, nc = layout == MATTN_SEQ_ZIGZAG ? 2 : 1;
    int64_t len = 0;
    for (int c = 0; c < nc; c++) {
        int64_t base = n / m, extra = n % m, ch = chunks[c];
        int64_t start = ch * base + (ch < extra ? ch : extra);
        for (int64_t i = 0; i < base + (ch < extra ? 1 : 0); i++)
            rows[len++] = start + i;
    }
    return len;
}

static void test_seq_split(void **state)
{
    (void)state;
    int64_t rows[64], start[2], count[2];
    for (int lay = 0; lay < 2; lay++)
        for (int64_t n = 0; n < 40; n++)
            for (int parts = 1; parts <= 7; parts++) {
                int seen[40] = {0};
                for (int i = 0; i < parts; i++) {
                    int64_t len = t_rows(n, parts, i, (mattn_seq_layout)lay, rows);
                    int runs = mattn_seq_split(n, parts, i, (mattn_seq_layout)lay, start, count);
                    assert_in_range(runs, 0, 2);
                    /* the runs list exactly the rows of the definition, in order */
                    int64_t at = 0;
                    for (int r = 0; r < runs; r++) {
                        assert_true(count[r] > 0);
                        for (int64_t j = 0; j < count[r]; j++, at++) {
                            assert_true(at < len);
                            assert_int_equal(start[r] + j, rows[at]);
                            seen[rows[at]]++;
                        }
                    }
                    assert_int_equal(at, len);
                    /* adjacent runs are merged */
                    if (runs == 2)
                        assert_true(start[0] + count[0] != start[1]);
                }
                for (int64_t x = 0; x < n; x++) /* every row on exactly one part */
                    assert_int_equal(seen[x], 1);
            }
    /* zigzag with one part is the whole sequence in one run */
    assert_int_equal(mattn_seq_split(10, 1, 0, MATTN_SEQ_ZIGZAG, start, count), 1);
    assert_int_equal(count[0], 10);
    /* invalid arguments give no runs */
    assert_int_equal(mattn_seq_split(10, 0, 0, MATTN_SEQ_ZIGZAG, start, count), 0);
    assert_int_equal(mattn_seq_split(10, 2, 2, MATTN_SEQ_ZIGZAG, start, count), 0);
    assert_int_equal(mattn_seq_split(-1, 2, 0, MATTN_SEQ_ZIGZAG, start, count), 0);
    assert_int_equal(mattn_seq_split(10, 2, 0, (mattn_seq_layout)5, start, count), 0);
    assert_string_equal(mattn_seq_layout_name(MATTN_SEQ_ZIGZAG), "zigzag");
}

static void split(int64_t n, int parts, int i, int64_t *start, int64_t *count)
{
    *count = n / parts + (i < n % parts ? 1 : 0);
    *start = i * (n / parts) + (i < n % parts ? i : n % parts);
}

static void test_shards(void **state)
{
    (void)state;
    int size = tl_size();
    mattn_dist_shape shape = {5, 23, 17, 6, 3, MATTN_SEQ_ZIGZAG};
    for (int dp = 1; dp <= size; dp++)
        for (int tp = 1; tp <= size / dp; tp++) {
            if (size % (dp * tp))
                continue;
            int sp = size / (dp * tp);
            mattn_mesh *m;
            assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, dp, tp, sp, &m), MATTN_OK);
            for (int lay = 0; lay < 2; lay++) {
                shape.layout = (mattn_seq_layout)lay;
                for (int r = 0; r < size; r++) { /* any rank's shard, from any rank */
                    mattn_shard sh;
                    assert_int_equal(mattn_mesh_shard(m, &shape, r, &sh), MATTN_OK);
                    int64_t s0, n0, rows[64];
                    split(5, dp, r / (sp * tp), &s0, &n0);
                    assert_int_equal(sh.batch_start, s0);
                    assert_int_equal(sh.batch_count, n0);
                    split(3, tp, (r / sp) % tp, &s0, &n0);
                    assert_int_equal(sh.kv_head_start, s0);
                    assert_int_equal(sh.kv_head_count, n0);
                    assert_int_equal(sh.q_head_start, 2 * s0); /* groups of Hq/Hkv = 2 */
                    assert_int_equal(sh.q_head_count, 2 * n0);
                    assert_int_equal(sh.q_len, t_rows(23, sp, r % sp, shape.layout, rows));
                    assert_int_equal(sh.q_run_start[0], sh.q_len ? rows[0] : 0);
                    assert_int_equal(sh.kv_len, t_rows(17, sp, r % sp, shape.layout, rows));
                }
            }
            mattn_shard sh;
            assert_int_equal(mattn_mesh_shard(m, &shape, size, &sh), MATTN_ERR_ARG);
            mattn_dist_shape bad = shape;
            bad.kv_heads = 4;
            assert_int_equal(mattn_mesh_shard(m, &bad, 0, &sh), MATTN_ERR_SHAPE);
            bad = shape, bad.q_len = -1;
            assert_int_equal(mattn_mesh_shard(m, &bad, 0, &sh), MATTN_ERR_SHAPE);
            assert_int_equal(mattn_mesh_shard(m, NULL, 0, &sh), MATTN_ERR_ARG);
            mattn_mesh_free(m);
        }
}

static void test_infer_shape(void **state)
{
    (void)state;
    int size = tl_size();
    mattn_dist_shape want = {3, 29, 31, 8, 4, MATTN_SEQ_ZIGZAG};
    int tp = size % 2 == 0 ? 2 : 1, sp = size / tp;
    mattn_mesh *m;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, tp, sp, &m), MATTN_OK);
    mattn_shard sh;
    assert_int_equal(mattn_mesh_shard(m, &want, mattn_mesh_rank(m), &sh), MATTN_OK);
    float x = 0;
    mattn_tensor q = mattn_tensor_bthd(&x, sh.batch_count, sh.q_len, sh.q_head_count, 16);
    mattn_tensor k = mattn_tensor_bthd(&x, sh.batch_count, sh.kv_len, sh.kv_head_count, 16);
    mattn_dist_shape got;
    assert_int_equal(mattn_mesh_infer_shape(m, &q, &k, MATTN_SEQ_ZIGZAG, &got), MATTN_OK);
    assert_int_equal(got.batch, 3);
    assert_int_equal(got.q_len, 29);
    assert_int_equal(got.kv_len, 31);
    assert_int_equal(got.q_heads, 8);
    assert_int_equal(got.kv_heads, 4);
    assert_int_equal(got.layout, MATTN_SEQ_ZIGZAG);
    /* one rank's q has a batch entry more than its k: every rank fails */
    q.batch += tl_rank() == size - 1;
    int rc = mattn_mesh_infer_shape(m, &q, &k, MATTN_SEQ_ZIGZAG, &got);
    assert_int_equal(rc, MATTN_ERR_SHAPE);
    q.batch = sh.batch_count;
    /* the shards of a contiguous split are not those of a zigzag one */
    q.seq = sh.q_len;
    if (size > 2) {
        assert_int_equal(mattn_mesh_infer_shape(m, &q, &k, MATTN_SEQ_CONTIGUOUS, &got),
                         MATTN_ERR_SHAPE);
    }
    mattn_mesh_free(m);
}

/* Element (b, t, h, d) of a global array holds a code of its indices. */
static float code(int64_t b, int64_t t, int64_t h, int64_t d)
{
    return (float)(((b * 100 + t) * 16 + h) * 8 + d);
}

static void scatter_gather_case(mattn_mesh *m, mattn_seq_layout layout, mattn_shard_role role,
                                int root, char global_layout, char local_layout)
{
    mattn_dist_shape shape = {3, 19, 13, 6, 3, layout};
    int64_t L = role == MATTN_SHARD_Q ? 19 : 13, H = role == MATTN_SHARD_Q ? 6 : 3, Dm = 5;
    mattn_shard sh;
    assert_int_equal(mattn_mesh_shard(m, &shape, mattn_mesh_rank(m), &sh), MATTN_OK);
    int64_t b0 = sh.batch_start, nb = sh.batch_count;
    int64_t h0 = role == MATTN_SHARD_Q ? sh.q_head_start : sh.kv_head_start;
    int64_t nh = role == MATTN_SHARD_Q ? sh.q_head_count : sh.kv_head_count;
    int dp, tp, sp, dpr, tpr, spr;
    mattn_mesh_shape(m, &dp, &tp, &sp);
    mattn_mesh_coords(m, &dpr, &tpr, &spr);
    int64_t rows[64], nl = t_rows(L, sp, spr, layout, rows);

    float *gbuf = tl_alloc(sizeof(float) * (size_t)(3 * L * H * Dm));
    /* 'p': BTHD with 3 floats of padding after each batch entry */
    float *lbuf = tl_alloc(sizeof(float) * (size_t)(nb * (nl * nh * Dm + 3) + 1));
    mattn_tensor g = global_layout == 'h' ? mattn_tensor_bhtd(gbuf, 3, L, H, Dm)
                                          : mattn_tensor_bthd(gbuf, 3, L, H, Dm);
    mattn_tensor l = local_layout == 'h' ? mattn_tensor_bhtd(lbuf, nb, nl, nh, Dm)
                                         : mattn_tensor_bthd(lbuf, nb, nl, nh, Dm);
    if (local_layout == 'p')
        l.stride_batch += 3;
    for (int64_t b = 0; b < 3; b++)
        for (int64_t t = 0; t < L; t++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < Dm; d++)
                    g.data[b * g.stride_batch + t * g.stride_seq + h * g.stride_head + d] =
                        mattn_mesh_rank(m) == root ? code(b, t, h, d) : -1.0f;
    assert_int_equal(mattn_mesh_scatter(m, &shape, role, root,
                                        mattn_mesh_rank(m) == root ? &g : NULL, &l),
                     MATTN_OK);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t t = 0; t < nl; t++)
            for (int64_t h = 0; h < nh; h++)
                for (int64_t d = 0; d < Dm; d++) {
                    float got =
                        l.data[b * l.stride_batch + t * l.stride_seq + h * l.stride_head + d];
                    if (got != code(b0 + b, rows[t], h0 + h, d))
                        fail_msg("scatter %s role %d root %d: local (%lld, %lld, %lld, %lld) = "
                                 "%g, want global (%lld, %lld, %lld)",
                                 mattn_seq_layout_name(layout),
                                 (int)role, root, (long long)b, (long long)t, (long long)h,
                                 (long long)d, got, (long long)(b0 + b), (long long)rows[t],
                                 (long long)(h0 + h));
                }
    /* Gather back into a cleared array: every element comes back once. */
    if (role == MATTN_SHARD_Q || tp == 1) {
        memset(gbuf, 0, sizeof(float) * (size_t)(3 * L * H * Dm));
        assert_int_equal(mattn_mesh_gather(m, &shape, role, root, &l, &g), MATTN_OK);
        if (mattn_mesh_rank(m) == root)
            for (int64_t b = 0; b < 3; b++)
                for (int64_t t = 0; t < L; t++)
                    for (int64_t h = 0; h < H; h++)
                        for (int64_t d = 0; d < Dm; d++)
                            assert_true(g.data[b * g.stride_batch + t * g.stride_seq +
                                               h * g.stride_head + d] == code(b, t, h, d));
    }
    free(gbuf);
    free(lbuf);
}

static void test_scatter_gather(void **state)
{
    (void)state;
    int size = tl_size();
    for (int dp = 1; dp <= size; dp++)
        for (int tp = 1; tp <= size / dp; tp++) {
            if (size % (dp * tp))
                continue;
            mattn_mesh *m;
            assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, dp, tp, size / (dp * tp), &m),
                             MATTN_OK);
            for (int lay = 0; lay < 2; lay++)
                for (int role = 0; role < 2; role++) {
                    scatter_gather_case(m, (mattn_seq_layout)lay, (mattn_shard_role)role, 0,
                                        't', 't');
                    scatter_gather_case(m, (mattn_seq_layout)lay, (mattn_shard_role)role, size - 1,
                                        'h', 'h');
                    scatter_gather_case(m, (mattn_seq_layout)lay, (mattn_shard_role)role, size / 2,
                                        't', 'h');
                    scatter_gather_case(m, (mattn_seq_layout)lay, (mattn_shard_role)role, 0,
                                        't', 'p');
                }
            mattn_mesh_free(m);
        }
}

static void test_scatter_lse_segments(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank();
    int tp = size % 2 == 0 ? 2 : 1, sp = size / tp;
    mattn_mesh *m;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, tp, sp, &m), MATTN_OK);
    mattn_dist_shape shape = {2, 21, 15, 4, 2, MATTN_SEQ_ZIGZAG};
    mattn_shard sh;
    assert_int_equal(mattn_mesh_shard(m, &shape, rank, &sh), MATTN_OK);
    int64_t rows[64], srows[64];
    t_rows(21, sp, rank % sp, MATTN_SEQ_ZIGZAG, rows);
    t_rows(15, sp, rank % sp, MATTN_SEQ_ZIGZAG, srows);
    /* lse [B, Hq, T] */
    float *g = tl_alloc(sizeof(float) * 2 * 4 * 21), *l = tl_alloc(sizeof(float) * 2 * 4 * 21);
    for (int x = 0; x < 2 * 4 * 21; x++)
        g[x] = (float)x;
    assert_int_equal(mattn_mesh_scatter_lse(m, &shape, 0, rank == 0 ? g : NULL, l), MATTN_OK);
    for (int64_t b = 0; b < sh.batch_count; b++)
        for (int64_t h = 0; h < sh.q_head_count; h++)
            for (int64_t t = 0; t < sh.q_len; t++)
                assert_true(l[(b * sh.q_head_count + h) * sh.q_len + t] ==
                            (float)(((sh.batch_start + b) * 4 + sh.q_head_start + h) * 21 +
                                    rows[t]));
    memset(g, 0, sizeof(float) * 2 * 4 * 21);
    assert_int_equal(mattn_mesh_gather_lse(m, &shape, 0, l, g), MATTN_OK);
    if (rank == 0)
        for (int x = 0; x < 2 * 4 * 21; x++)
            assert_true(g[x] == (float)x);
    /* segment ids [B, T] and [B, S]: every tp rank gets its sequence rows */
    int32_t gq[2 * 21], gk[2 * 15], lq[2 * 21], lk[2 * 15];
    for (int x = 0; x < 2 * 21; x++)
        gq[x] = 1000 + x;
    for (int x = 0; x < 2 * 15; x++)
        gk[x] = 2000 + x;
    assert_int_equal(mattn_mesh_scatter_segment_ids(m, &shape, MATTN_SHARD_Q, 0, gq, lq),
                     MATTN_OK);
    assert_int_equal(mattn_mesh_scatter_segment_ids(m, &shape, MATTN_SHARD_KV, 0, gk, lk),
                     MATTN_OK);
    for (int64_t b = 0; b < 2; b++) {
        for (int64_t t = 0; t < sh.q_len; t++)
            assert_int_equal(lq[b * sh.q_len + t], 1000 + b * 21 + rows[t]);
        for (int64_t j = 0; j < sh.kv_len; j++)
            assert_int_equal(lk[b * sh.kv_len + j], 2000 + b * 15 + srows[j]);
    }
    free(g), free(l);
    mattn_mesh_free(m);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_mesh: TIMEOUT\n";
    if (write(2, msg, sizeof msg - 1) < 0)
        _exit(3);
    _exit(3);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    signal(SIGALRM, on_alarm); /* a hang is a failure */
    const char *limit = getenv("TEST_ALARM");
    alarm(limit ? (unsigned)atoi(limit) : 120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes_and_coords),
        cmocka_unit_test(test_bad_shape_everywhere),
        cmocka_unit_test(test_bad_shape_on_one_rank),
        cmocka_unit_test(test_split_rule),
        cmocka_unit_test(test_seq_split),
        cmocka_unit_test(test_shards),
        cmocka_unit_test(test_infer_shape),
        cmocka_unit_test(test_scatter_gather),
        cmocka_unit_test(test_scatter_lse_segments),
    };
    int failed = tl_run_all("mesh", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
