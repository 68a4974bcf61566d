/* Decode across ranks: every mesh shape dp x tp x sp of the job, the cache
 * split over sp (uneven, ranks with nothing), batch over dp, kv heads over tp;
 * each rank's rows against the float64 reference of the global problem (so
 * equal to single-rank decode within fp32 rounding), bit-identical on every
 * rank of an sp group and from run to run, both merge algorithms; paged
 * caches split by token ranges in per-rank shuffled pages; and bad or
 * inconsistent arguments on some ranks -> the same error on all, no hang. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/testlib.h"
#include "test_decode_ref.h"

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *c = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 0x100000001b3ULL;
    return h;
}

/* Fails unless `h` is the same on every rank of comm. */
static void assert_same_everywhere(MPI_Comm comm, uint64_t h, const char *what)
{
    unsigned long long mine = h, lo, hi;
    MPI_Allreduce(&mine, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, comm);
    MPI_Allreduce(&mine, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, comm);
    if (lo != hi)
        fail_msg("%s: ranks hold different bits", what);
}

typedef struct global_problem {
    int64_t B, Hq, Hkv, D, Dv, S;
    float *q, *k, *v, *sinks;
    int32_t *starts, *ends;
} global_problem;

static global_problem gp_make(uint64_t seed, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                              int64_t Dv, int64_t S)
{
    tl_rng r = tl_rng_make(seed);
    global_problem g = {B, Hq, Hkv, D, Dv, S, NULL, NULL, NULL, NULL, NULL, NULL};
    g.q = tl_alloc(sizeof(float) * (size_t)(B * Hq * D));
    g.k = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * D));
    g.v = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * Dv));
    g.sinks = tl_alloc(sizeof(float) * (size_t)Hq);
    tl_fill(&r, g.q, B * Hq * D, 2.0);
    tl_fill(&r, g.k, B * S * Hkv * D, 2.0);
    tl_fill(&r, g.v, B * S * Hkv * Dv, 1.0);
    tl_fill(&r, g.sinks, Hq, 3.0);
    g.starts = tl_alloc(sizeof(int32_t) * (size_t)B);
    g.ends = tl_alloc(sizeof(int32_t) * (size_t)B);
    for (int64_t b = 0; b < B; b++) { /* full, empty, length 1, unaligned, random */
        int64_t lo = 0, hi = S;
        if (b % 5 == 1)
            lo = hi = S / 2;
        else if (b % 5 == 2)
            lo = S > 7 ? S - 7 : 0, hi = lo + 1;
        else if (b % 5 == 3)
            lo = S > 8 ? 5 : 0, hi = S > 8 ? S - 3 : S;
        else if (b % 5 == 4)
            lo = tl_int(&r, S), hi = lo + tl_int(&r, S - lo + 1);
        g.starts[b] = (int32_t)lo, g.ends[b] = (int32_t)hi;
    }
    return g;
}

static void gp_free(global_problem *g)
{
    free(g->q), free(g->k), free(g->v), free(g->sinks), free(g->starts), free(g->ends);
}

/* One distributed ragged decode on mesh (dp, tp, sp) with this rank's views
 * into the global arrays; checks rows, group identity and repeatability. */
static void run_mesh_case(const global_problem *g, int dp, int tp, int sp,
                          const mattn_options *base, const char *label)
{
    int rank = tl_rank();
    mattn_mesh *mesh = NULL;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, dp, tp, sp, &mesh), MATTN_OK);
    int dr, tr, sr;
    mattn_mesh_coords(mesh, &dr, &tr, &sr);
    int64_t b0, nb, hk0, nhk, s0, ns;
    mattn_split(g->B, dp, dr, &b0, &nb);
    mattn_split(g->Hkv, tp, tr, &hk0, &nhk);
    mattn_split(g->S, sp, sr, &s0, &ns); /* uneven; empty for sp > S */
    int64_t G = g->Hq / g->Hkv, h0 = hk0 * G, nh = nhk * G, Dv = g->Dv;
    mattn_tensor q = {g->q + (b0 * g->Hq + h0) * g->D, nb, 1, nh, g->D,
                      g->Hq * g->D, g->Hq * g->D, g->D};
    mattn_tensor k = {g->k + ((b0 * g->S + s0) * g->Hkv + hk0) * g->D, nb, ns, nhk, g->D,
                      g->S * g->Hkv * g->D, g->Hkv * g->D, g->D};
    mattn_tensor v = {g->v + ((b0 * g->S + s0) * g->Hkv + hk0) * Dv, nb, ns, nhk, Dv,
                      g->S * g->Hkv * Dv, g->Hkv * Dv, Dv};
    int64_t rows = nb * nh;
    float *o = tl_alloc(sizeof(float) * (size_t)(rows * Dv + 1));
    float *o2 = tl_alloc(sizeof(float) * (size_t)(rows * Dv + 1));
    float *lse = tl_alloc(sizeof(float) * (size_t)(rows + 1));
    float *m = tl_alloc(sizeof(float) * (size_t)(rows + 1));
    float *l = tl_alloc(sizeof(float) * (size_t)(rows + 1));
    for (int64_t i = 0; i < rows * Dv; i++)
        o[i] = NAN;
    mattn_tensor to = mattn_tensor_bthd(o, nb, 1, nh, Dv), to2 = mattn_tensor_bthd(o2, nb, 1, nh, Dv);
    mattn_options opts = *base;
    opts.kv_offset = s0;
    if (base->sinks)
        opts.sinks = base->sinks + h0; /* this rank's heads */
    int rc = mattn_ragged_decode_mesh(mesh, &q, &k, &v, g->starts + b0, g->ends + b0, &to, m, l,
                                      lse, &opts);
    if (rc != MATTN_OK)
        fail_msg("%s: %s (%s)", label, mattn_err_name(rc), mattn_last_error());

    char what[160];
    snprintf(what, sizeof what, "%s mesh %dx%dx%d rank %d", label, dp, tp, sp, rank);
    dref_opts op = {.scale = (double)(base->scale != 0.0f ? base->scale
                                                           : (float)(1.0 / sqrt((double)g->D))),
                    .softcap = base->softcap, .window_left = base->window_left,
                    .window_right = base->window_right, .chunk = base->chunk,
                    .sinks = base->sinks};
    op.merges = g->S / (base->block_kv > 0 ? base->block_kv : 2048) + 3 + sp;
    double *ro = tl_alloc(sizeof(double) * (size_t)Dv);
    for (int64_t b = 0; b < nb; b++)
        for (int64_t hh = 0; hh < nh; hh++) {
            int64_t gb = b0 + b, h = h0 + hh, row = b * nh + hh;
            dref_row r;
            dref_row_compute(&op, g->q + (gb * g->Hq + h) * g->D, g->k + gb * g->S * g->Hkv * g->D,
                             g->v + gb * g->S * g->Hkv * Dv, 0, g->Hq, g->Hkv, g->D, Dv, h,
                             g->ends[gb] - 1, g->starts[gb], g->ends[gb], ro, &r);
            dref_check_row(what, gb, 0, h, o + row * Dv, ro, Dv, lse + row, m + row, l + row, &r);
        }

    /* Same bits on every rank of the sp group, and on a second run (ar). */
    MPI_Comm group;
    MPI_Comm_split(MPI_COMM_WORLD, rank / sp, rank, &group);
    assert_same_everywhere(group, hash_bytes(o, sizeof(float) * (size_t)(rows * Dv)) ^
                                      hash_bytes(lse, sizeof(float) * (size_t)rows), what);
    MPI_Comm_free(&group);
    float *lse2 = tl_alloc(sizeof(float) * (size_t)(rows + 1));
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, g->starts + b0, g->ends + b0, &to2,
                                          lse2, &opts),
                     MATTN_OK);
    assert_memory_equal(o, o2, sizeof(float) * (size_t)(rows * Dv));
    assert_memory_equal(lse, lse2, sizeof(float) * (size_t)rows);
    free(ro), free(o), free(o2), free(lse), free(lse2), free(m), free(l);
    mattn_mesh_free(mesh);
}

static void for_each_mesh(const global_problem *g, const mattn_options *opts, const char *label)
{
    int size = tl_size();
    for (int dp = 1; dp <= size; dp++)
        for (int tp = 1; tp <= size / dp; tp++) {
            if (size % (dp * tp) != 0 || g->Hkv % tp != 0)
                continue;
            run_mesh_case(g, dp, tp, size / (dp * tp), opts, label);
        }
}

static void test_contiguous_meshes(void **state)
{
    (void)state;
    global_problem g = gp_make(1, 5, 8, 2, 16, 24, 50);
    mattn_options o = mattn_options_default();
    for_each_mesh(&g, &o, "plain");
    o.sinks = g.sinks, o.softcap = 4.0f, o.window_left = 20;
    for_each_mesh(&g, &o, "sinks+cap+window");
    o = mattn_options_default();
    o.block_kv = 8, o.threads = 2, o.chunk = 16; /* split-KV inside each rank too */
    for_each_mesh(&g, &o, "pieces+chunk");
    gp_free(&g);
    /* MQA, and more ranks than keys (sp ranks with empty caches) */
    g = gp_make(2, 3, 4, 1, 8, 8, 3);
    o = mattn_options_default();
    o.sinks = g.sinks;
    for_each_mesh(&g, &o, "tiny cache");
    gp_free(&g);
}

static void test_allgather_merge(void **state)
{
    (void)state;
    global_problem g = gp_make(3, 4, 4, 2, 16, 16, 40);
    mattn_options o = mattn_options_default();
    o.sinks = g.sinks;
    setenv("MATTN_DECODE_MERGE", "allgather", 1);
    run_mesh_case(&g, 1, 1, tl_size(), &o, "allgather");
    unsetenv("MATTN_DECODE_MERGE");
    gp_free(&g);
}

/* Paged across ranks: rank r holds tokens split(total, P, r) of every
 * sequence, or the reversed assignment, in its own shuffled pages. */
static void test_paged_ranks(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank();
    const int64_t total[] = {40, 9, 0, 3, 1, 70}, qn[] = {1, 9, 0, 2, 1, 1};
    float sinks[4] = {0.5f, -1.0f, 2.0f, 1.0f};
    mattn_mesh *mesh = NULL;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, &mesh), MATTN_OK);
    for (int variant = 0; variant < 3; variant++) {
        pcase c = pcase_make(50 + variant, 6, total, qn, 4, 2, 16, 24);
        if (variant == 1)
            c.opts.sinks = sinks, c.opts.window_left = 4, c.opts.window_right = 0;
        if (variant == 2)
            c.opts.softcap = 2.0f, c.opts.block_kv = 4;
        int part = variant == 1 ? size - 1 - rank : rank;
        int64_t lo[6], len[6];
        for (int s = 0; s < 6; s++)
            mattn_split(total[s], size, part, &lo[s], &len[s]);
        mattn_paged_kv kv;
        pcase_pages(&c, variant == 2 ? 1 : 4, lo, len, 60 + rank, variant, &kv);
        float *o = tl_alloc(sizeof(float) * (size_t)(c.T * c.Hq * c.Dv + 1));
        float *o2 = tl_alloc(sizeof(float) * (size_t)(c.T * c.Hq * c.Dv + 1));
        float *lse = tl_alloc(sizeof(float) * (size_t)(c.T * c.Hq + 1));
        mattn_tensor q = mattn_tensor_bthd(c.q, 1, c.T, c.Hq, c.D);
        mattn_tensor to = mattn_tensor_bthd(o, 1, c.T, c.Hq, c.Dv);
        mattn_tensor to2 = mattn_tensor_bthd(o2, 1, c.T, c.Hq, c.Dv);
        int rc = mattn_paged_forward_mesh(mesh, &q, &kv, c.cu, &to, lse, &c.opts);
        if (rc != MATTN_OK)
            fail_msg("paged variant %d: %s (%s)", variant, mattn_err_name(rc), mattn_last_error());
        char what[64];
        snprintf(what, sizeof what, "paged variant %d rank %d", variant, rank);
        pcase_check(what, &c, o, lse, 70 / (c.opts.block_kv ? c.opts.block_kv : 2048) + 3 + size);
        assert_same_everywhere(MPI_COMM_WORLD,
                               hash_bytes(o, sizeof(float) * (size_t)(c.T * c.Hq * c.Dv)), what);
        assert_int_equal(mattn_paged_forward_mesh(mesh, &q, &kv, c.cu, &to2, NULL, &c.opts),
                         MATTN_OK);
        assert_memory_equal(o, o2, sizeof(float) * (size_t)(c.T * c.Hq * c.Dv));
        free(o), free(o2), free(lse);
        pcase_pages_free(&kv);
        pcase_free(&c);
    }
    mattn_mesh_free(mesh);
}

/* A problem wrong on one rank gives the same error on every rank. */
static void test_errors_agree(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank(), last = rank == size - 1;
    global_problem g = gp_make(4, 2, 4, 2, 8, 8, 12);
    mattn_mesh *mesh = NULL;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, &mesh), MATTN_OK);
    int64_t s0, ns;
    mattn_split(g.S, size, rank, &s0, &ns);
    mattn_tensor q = mattn_tensor_bthd(g.q, g.B, 1, g.Hq, g.D);
    mattn_tensor k = {g.k + s0 * g.Hkv * g.D, g.B, ns, g.Hkv, g.D, g.S * g.Hkv * g.D, g.Hkv * g.D, g.D};
    mattn_tensor v = {g.v + s0 * g.Hkv * g.Dv, g.B, ns, g.Hkv, g.Dv, g.S * g.Hkv * g.Dv, g.Hkv * g.Dv, g.Dv};
    float o[2 * 4 * 8], lse[8];
    mattn_tensor to = mattn_tensor_bthd(o, g.B, 1, g.Hq, g.Dv);
    mattn_options opts = mattn_options_default();
    opts.kv_offset = s0;
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, g.ends, &to, lse, &opts),
                     MATTN_OK);

    mattn_options bad = opts; /* unsupported on the last rank only */
    if (last)
        bad.dropout_p = 0.25f;
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, g.ends, &to, lse, &bad),
                     MATTN_ERR_UNSUPPORTED);
    assert_non_null(strstr(mattn_last_error(), "dropout"));

    if (size > 1) {
        bad = opts; /* the last range moved up: past the others' end */
        if (last)
            bad.kv_offset = s0 + 1;
        assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, g.ends, &to, lse, &bad),
                         MATTN_ERR_ARG);
        assert_non_null(strstr(mattn_last_error(), "tile"));
        bad = opts; /* moved down: inside the bounds, overlapping its neighbour */
        if (last)
            bad.kv_offset = s0 - 1;
        assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, g.ends, &to, lse, &bad),
                         MATTN_ERR_ARG);
        assert_non_null(strstr(mattn_last_error(), "tile"));
    }

    /* Options that change the numbers, different on the last rank only. */
    float sinks[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    for (int which = 0; which < 4 && size > 1; which++) {
        bad = opts;
        if (last && which == 0)
            bad.window_left = 3;
        if (last && which == 1)
            bad.sinks = sinks;
        if (last && which == 2)
            bad.scale = 0.5f;
        if (last && which == 3)
            bad.softcap = 2.0f;
        int rc = mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, g.ends, &to, lse, &bad);
        if (rc != MATTN_ERR_ARG || !strstr(mattn_last_error(), "options"))
            fail_msg("option %d on one rank: %s (%s)", which, mattn_err_name(rc),
                     mattn_last_error());
    }
    if (size > 1) { /* the merge algorithm chosen on one rank only */
        if (last)
            setenv("MATTN_DECODE_MERGE", "allgather", 1);
        int rc = mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, g.ends, &to, lse, &opts);
        unsetenv("MATTN_DECODE_MERGE");
        if (rc != MATTN_ERR_ARG || !strstr(mattn_last_error(), "MATTN_DECODE_MERGE"))
            fail_msg("merge on one rank: %s (%s)", mattn_err_name(rc), mattn_last_error());
    }
    /* NULL starts on some ranks and zeros on the others: the same problem. */
    int32_t zeros[2] = {0, 0};
    float o0[2 * 4 * 8], lse0[8];
    mattn_tensor to0 = mattn_tensor_bthd(o0, g.B, 1, g.Hq, g.Dv);
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, NULL, g.ends, &to0, lse0, &opts),
                     MATTN_OK);
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, rank % 2 ? zeros : NULL, g.ends,
                                          &to, lse, &opts),
                     MATTN_OK);
    assert_memory_equal(o, o0, sizeof o);

    int32_t ends2[2] = {g.ends[0], g.ends[1]};
    if (last && size > 1) /* a different problem on one rank */
        ends2[0] = g.ends[0] > 0 ? g.ends[0] - 1 : 1;
    int want = size > 1 ? MATTN_ERR_ARG : MATTN_OK;
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, ends2, &to, lse, &opts), want);

    int32_t ends3[2] = {(int32_t)g.S + 1, g.ends[1]}; /* beyond every rank's cache */
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, NULL, ends3, &to, lse, &opts),
                     MATTN_ERR_SHAPE);
    assert_int_equal(mattn_ar_decode_mesh(NULL, &q, &k, &v, NULL, g.ends, &to, lse, &opts),
                     MATTN_ERR_ARG);
    /* and the mesh still works afterwards */
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, g.ends, &to, lse, &opts),
                     MATTN_OK);
    mattn_mesh_free(mesh);
    gp_free(&g);
}

/* The sp group's caches may start anywhere (an evicted prefix, a window):
 * the same problem with every position moved by 7 gives the same bits; a
 * sequence reaching below the caches is an error. */
static void test_cache_base(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank();
    global_problem g = gp_make(5, 5, 4, 2, 8, 8, 30);
    mattn_mesh *mesh = NULL;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, &mesh), MATTN_OK);
    int64_t s0, ns;
    mattn_split(g.S, size, rank, &s0, &ns);
    mattn_tensor q = mattn_tensor_bthd(g.q, g.B, 1, g.Hq, g.D);
    mattn_tensor k = {g.k + s0 * g.Hkv * g.D, g.B, ns, g.Hkv, g.D, g.S * g.Hkv * g.D, g.Hkv * g.D, g.D};
    mattn_tensor v = {g.v + s0 * g.Hkv * g.Dv, g.B, ns, g.Hkv, g.Dv, g.S * g.Hkv * g.Dv, g.Hkv * g.Dv, g.Dv};
    float o[5 * 4 * 8], o7[5 * 4 * 8], lse[20], lse7[20];
    mattn_tensor to = mattn_tensor_bthd(o, g.B, 1, g.Hq, g.Dv), to7 = mattn_tensor_bthd(o7, g.B, 1, g.Hq, g.Dv);
    mattn_options opts = mattn_options_default();
    opts.sinks = g.sinks, opts.block_kv = 4;
    opts.kv_offset = s0;
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, g.starts, g.ends, &to, lse, &opts),
                     MATTN_OK);
    int32_t starts7[5], ends7[5];
    for (int b = 0; b < 5; b++)
        starts7[b] = g.starts[b] + 7, ends7[b] = g.ends[b] + 7;
    opts.kv_offset = s0 + 7;
    int rc = mattn_ar_decode_mesh(mesh, &q, &k, &v, starts7, ends7, &to7, lse7, &opts);
    if (rc != MATTN_OK)
        fail_msg("caches from position 7: %s (%s)", mattn_err_name(rc), mattn_last_error());
    assert_memory_equal(o, o7, sizeof o);
    assert_memory_equal(lse, lse7, sizeof lse);
    starts7[0] = 6; /* sequence 0 is the full range: one key below the caches */
    assert_int_equal(mattn_ar_decode_mesh(mesh, &q, &k, &v, starts7, ends7, &to7, lse7, &opts),
                     MATTN_ERR_SHAPE);
    assert_non_null(strstr(mattn_last_error(), "[7, 37)"));
    mattn_mesh_free(mesh);
    gp_free(&g);
}

/* Paged metadata wrong on one rank: the same error everywhere, no hang. */
static void test_paged_errors_agree(void **state)
{
    (void)state;
    int size = tl_size(), rank = tl_rank(), last = rank == size - 1;
    const int64_t total[] = {20, 5}, qn[] = {1, 2};
    mattn_mesh *mesh = NULL;
    assert_int_equal(mattn_mesh_create(MPI_COMM_WORLD, 1, 1, size, &mesh), MATTN_OK);
    pcase c = pcase_make(80, 2, total, qn, 4, 2, 8, 8);
    int64_t lo[2], len[2];
    for (int s = 0; s < 2; s++)
        mattn_split(total[s], size, rank, &lo[s], &len[s]);
    mattn_paged_kv kv;
    pcase_pages(&c, 4, lo, len, 90 + rank, 0, &kv);
    float o[3 * 4 * 8];
    mattn_tensor q = mattn_tensor_bthd(c.q, 1, c.T, c.Hq, c.D);
    mattn_tensor to = mattn_tensor_bthd(o, 1, c.T, c.Hq, c.Dv);
    assert_int_equal(mattn_paged_forward_mesh(mesh, &q, &kv, c.cu, &to, NULL, &c.opts), MATTN_OK);

    if (size > 1) {
        /* sequence 0's range on the last rank moved down one token: overlap */
        int32_t *starts = (int32_t *)kv.kv_starts;
        if (last)
            starts[0] -= 1;
        assert_int_equal(mattn_paged_forward_mesh(mesh, &q, &kv, c.cu, &to, NULL, &c.opts),
                         MATTN_ERR_ARG);
        assert_non_null(strstr(mattn_last_error(), "tile"));
        if (last)
            starts[0] += 1;
        /* kv_totals missing everywhere: named, not "a different problem" */
        mattn_paged_kv nt = kv;
        nt.kv_totals = NULL;
        assert_int_equal(mattn_paged_forward_mesh(mesh, &q, &nt, c.cu, &to, NULL, &c.opts),
                         MATTN_ERR_ARG);
        assert_non_null(strstr(mattn_last_error(), "kv_totals"));
        /* different options on the last rank */
        mattn_options bad = c.opts;
        if (last)
            bad.window_left = 2;
        assert_int_equal(mattn_paged_forward_mesh(mesh, &q, &kv, c.cu, &to, NULL, &bad),
                         MATTN_ERR_ARG);
        assert_non_null(strstr(mattn_last_error(), "options"));
    }
    /* a page id out of range on the last rank */
    int32_t *table = (int32_t *)kv.page_table, saved = table[0];
    if (last)
        table[0] = (int32_t)kv.k_pages.batch;
    assert_int_equal(mattn_paged_forward_mesh(mesh, &q, &kv, c.cu, &to, NULL, &c.opts),
                     len[0] > 0 || !last ? MATTN_ERR_ARG : MATTN_OK);
    table[0] = saved;
    assert_int_equal(mattn_paged_forward_mesh(mesh, &q, &kv, c.cu, &to, NULL, &c.opts), MATTN_OK);
    pcase_pages_free(&kv);
    pcase_free(&c);
    mattn_mesh_free(mesh);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contiguous_meshes),
        cmocka_unit_test(test_allgather_merge),
        cmocka_unit_test(test_paged_ranks),
        cmocka_unit_test(test_errors_agree),
        cmocka_unit_test(test_cache_base),
        cmocka_unit_test(test_paged_errors_agree),
    };
    int failed = tl_run_all("decode_dist", tests, sizeof tests / sizeof tests[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
