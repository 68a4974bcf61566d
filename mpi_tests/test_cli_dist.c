/* The mattn command under MPI_COMM_WORLD (collective tests, every rank runs
 * each): `mattn run` and `mattn grad` on a mesh of all ranks. Rank 0 writes
 * the problem as .npy files; the distributed output files must have the
 * single-rank shapes and match the float64 reference of the formulas
 * (testlib's tc_reference, refgrad's rg_backward) within the fp32 bounds,
 * for every operator, both sequence layouts, uneven lengths and the
 * options; synthetic runs must build the same global problem at any rank
 * count; errors (bad --mesh, a file missing on rank 0, --mask-kind dense
 * without --mask) give the same exit status on every rank. */
#include <signal.h>

#include "common/refgrad.h"
#include "test_cli_common.h"

/* Every rank gets rank 0's argument list (only rank 0 wrote the files). */
static void argl_share(argl *a)
{
    char buf[8192];
    int len = 0;
    if (tl_rank() == 0)
        for (int x = 0; x < a->n; x++)
            len += snprintf(buf + len, sizeof buf - (size_t)len, "%s", a->v[x]) + 1;
    MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(buf, len, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (tl_rank() != 0) {
        argl_free(a);
        for (int at = 0; at < len; at += (int)strlen(buf + at) + 1)
            arg(a, "%s", buf + at);
    }
}

static tmpdir dir_shared(void)
{
    tmpdir d = {{0}};
    if (tl_rank() == 0)
        d = dir_make();
    MPI_Bcast(d.path, sizeof d.path, MPI_CHAR, 0, MPI_COMM_WORLD);
    return d;
}

static const char *mesh_for(const char *op)
{
    /* a mesh that uses every axis the operator allows, at any rank count */
    static char m[32];
    int P = tl_size();
    if (strcmp(op, "ring") == 0)
        snprintf(m, sizeof m, P == 4 ? "2,1,2" : "1,1,%d", P);
    else
        snprintf(m, sizeof m, P == 4 ? "2,2,1" : "1,%d,1", P);
    return m;
}

/* BTHD copy of an output file in layout L. */
static float *to_bthd(const float *x, char L, int64_t B, int64_t T, int64_t H, int64_t Dm)
{
    float *y = tl_alloc(sizeof(float) * (size_t)(B * T * H * Dm + 1));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++)
                memcpy(y + ((b * T + t) * H + h) * Dm,
                       x + (L == 'h' ? ((b * H + h) * T + t) : ((b * T + t) * H + h)) * Dm,
                       sizeof(float) * (size_t)Dm);
    return y;
}

/* `mattn run --op op` on all ranks (extra args appended) vs the reference. */
static void dist_run(const tc_problem *p, const char *op, const file_style *st,
                     const char *const *extra)
{
    tmpdir d = dir_shared();
    argl a = {.n = 0};
    arg(&a, "run"), arg(&a, "--op"), arg(&a, "%s", op);
    if (tl_rank() == 0)
        write_problem(&d, p, st, &a);
    for (; extra && *extra; extra++)
        arg(&a, "%s", *extra);
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    arg(&a, "--lse"), arg(&a, "%s", in_dir(&d, "lse.npy"));
    argl_share(&a);
    cli_result r = cli_argl(MPI_COMM_WORLD, &a);
    expect_code(&r, 0);
    if (tl_rank() == 0) {
        char want[48];
        snprintf(want, sizeof want, "ranks: %d\n", tl_size());
        expect_in(r.out, want, "report");
        char L = st->layout ? st->layout : 't';
        int64_t os[4] = {p->B, L == 'h' ? p->Hq : p->T, L == 'h' ? p->T : p->Hq, p->Dv};
        int64_t ls[3] = {p->B, p->Hq, p->T};
        float *o = read_output(in_dir(&d, "o.npy"), 4, os);
        float *lse = read_output(in_dir(&d, "lse.npy"), 3, ls);
        float *ob = to_bthd(o, L, p->B, p->T, p->Hq, p->Dv);
        size_t rows = (size_t)(p->B * p->T * p->Hq);
        double *ro = tl_alloc(sizeof(double) * (rows * (size_t)p->Dv + 1));
        double *rl = tl_alloc(sizeof(double) * (rows + 1));
        double *to = tl_alloc(sizeof(double) * (rows + 1));
        double *tlse = tl_alloc(sizeof(double) * (rows + 1));
        tc_reference(p, ro, rl, NULL, to, tlse, NULL);
        char what[96];
        snprintf(what, sizeof what, "mpirun -np %d mattn run --op %s (layout %c)", tl_size(), op,
                 L);
        tc_check_o(what, p, ob, ro, to);
        tc_check_lse(what, p, lse, rl, tlse);
        free(o), free(lse), free(ob), free(ro), free(rl), free(to), free(tlse);
        assert_int_equal(dir_count(&d, ".tmp."), 0);
        dir_free(&d);
    }
    cli_free(&r);
    argl_free(&a);
}

#define ARGS(...) (const char *const[]){__VA_ARGS__, NULL}

static void test_run_ops(void **state)
{
    (void)state;
    file_style st = {0};
    tc_problem p = make(101, 2, 37, 45, 4, 2, 16, 12); /* uneven everywhere */
    p.causal = 1, p.q_offset = 8;
    dist_run(&p, "vanilla", &st, NULL);
    dist_run(&p, "sdpa", &st, NULL);
    dist_run(&p, "flash", &st, ARGS("--mesh", mesh_for("flash")));
    dist_run(&p, "splash", &st, ARGS("--mesh", mesh_for("splash"), "--mask-kind", "causal"));
    dist_run(&p, "ring", &st, ARGS("--seq-layout", "zigzag"));
    dist_run(&p, "ring", &st, ARGS("--mesh", mesh_for("ring"), "--comm", "sendrecv"));
    tc_free(&p);
}

static void test_run_ring_options(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(5);
    tc_problem p = make(102, 1, 41, 33, 4, 1, 8, 8); /* MQA, T != S */
    p.window_left = 6, p.window_right = 2;
    file_style bh = {.layout = 'h'};
    dist_run(&p, "ring", &bh, ARGS("--seq-layout", "contiguous"));
    p.window_left = p.window_right = -1, p.causal = 1, p.chunk = 9;
    add_segments(&p, &r);
    p.sinks = tl_alloc(sizeof(float) * 4);
    tl_fill(&r, p.sinks, 4, 1.0);
    p.softcap = 4.0, p.dropout_p = 0.2f, p.seed = 11;
    dist_run(&p, "ring", &bh, ARGS("--seq-layout", "zigzag"));
    add_mask(&p, &r, 1, 4);
    add_bias(&p, &r, 1, 1);
    file_style st = {0};
    dist_run(&p, "ring", &st, ARGS("--seq-layout", "zigzag", "--quiet"));
    dist_run(&p, "flash", &st, ARGS("--quiet"));
    tc_free(&p);
}

/* Synthetic: each rank makes its shard; the global problem (hence o) is the
 * one a single rank makes. Both runs pass --check (the float64 reference
 * within fp32 bounds, a few 1e-7 here), so they agree to 1e-5; another
 * problem would differ by ~0.1. */
static void test_run_synthetic(void **state)
{
    (void)state;
    tmpdir d = dir_shared();
    const char *common[] = {"--seq", "70", "--kv-seq", "61", "--heads", "4", "--kv-heads", "2",
                            "--dim", "16", "--causal", "--q-offset", "9", "--seed", "3",
                            "--check", "--quiet", "--repeat", "1", "--warmup", "0"};
    argl a = {.n = 0}, b = {.n = 0};
    arg(&a, "run"), arg(&b, "run");
    for (size_t x = 0; x < sizeof common / sizeof *common; x++)
        arg(&a, "%s", common[x]), arg(&b, "%s", common[x]);
    arg(&a, "--op"), arg(&a, "ring"), arg(&a, "--seq-layout"), arg(&a, "zigzag");
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "oP.npy"));
    arg(&b, "--op"), arg(&b, "flash"), arg(&b, "--out"), arg(&b, "%s", in_dir(&d, "o1.npy"));
    cli_result r = cli_argl(MPI_COMM_WORLD, &a);
    expect_code(&r, 0);
    if (tl_rank() == 0) {
        expect_in(r.out, "check: pass", "report");
        expect_in(r.out, "comm_wait_s: ", "report");
        for (int x = 0; x < tl_size(); x++) {
            char want[32];
            snprintf(want, sizeof want, "\nrank_%d: q_rows=", x);
            expect_in(r.out, want, "report");
        }
        cli_result r1 = cli_argl(MPI_COMM_SELF, &b);
        expect_code(&r1, 0);
        int64_t os[4] = {1, 70, 4, 16};
        float *o1 = read_output(in_dir(&d, "o1.npy"), 4, os);
        float *oP = read_output(in_dir(&d, "oP.npy"), 4, os);
        for (int64_t x = 0; x < 70 * 4 * 16; x++)
            tl_assert_close(oP[x], o1[x], 1e-5, "synthetic o[%lld]", (long long)x);
        free(o1), free(oP);
        cli_free(&r1);
        dir_free(&d);
    }
    cli_free(&r);
    argl_free(&a);
    argl_free(&b);
}

/* ------------------------------------------------------------------ grad */

/* `mattn grad` (single rank on comm SELF, or all ranks) vs refgrad. */
static void grad_run(MPI_Comm comm, const tc_problem *p, const char *op, const file_style *st,
                     int give_forward, const char *const *extra)
{
    int root = comm == MPI_COMM_SELF || tl_rank() == 0;
    tmpdir d = comm == MPI_COMM_SELF ? dir_make() : dir_shared();
    char L = st->layout ? st->layout : 't';
    argl a = {.n = 0};
    arg(&a, "grad"), arg(&a, "--op"), arg(&a, "%s", op);
    tl_rng rr = tl_rng_make(404);
    float *dout = rg_random_dout(&rr, p);
    rg_inputs in = rg_inputs_make(p, dout);
    rg_grads g = rg_backward(p, &in, NULL);
    if (root) {
        write_problem(&d, p, st, &a);
        int64_t os[4] = {p->B, L == 'h' ? p->Hq : p->T, L == 'h' ? p->T : p->Hq, p->Dv};
        float *x = to_layout(dout, L, p->B, p->T, p->Hq, p->Dv);
        write_f32(in_dir(&d, "do.npy"), 4, os, x);
        free(x);
        arg(&a, "--do"), arg(&a, "%s", in_dir(&d, "do.npy"));
        if (give_forward) { /* the reference forward, rounded to fp32 */
            int64_t n = p->B * p->T * p->Hq * p->Dv, ls[3] = {p->B, p->Hq, p->T};
            float *o = tl_alloc(sizeof(float) * (size_t)(n + 1));
            float *l = tl_alloc(sizeof(float) * (size_t)(p->B * p->Hq * p->T + 1));
            for (int64_t i = 0; i < n; i++)
                o[i] = (float)g.o[i];
            for (int64_t i = 0; i < p->B * p->Hq * p->T; i++)
                l[i] = (float)g.lse[i];
            float *ol = to_layout(o, L, p->B, p->T, p->Hq, p->Dv);
            write_f32(in_dir(&d, "o.npy"), 4, os, ol);
            write_f32(in_dir(&d, "lse.npy"), 3, ls, l);
            free(o), free(l), free(ol);
            arg(&a, "--o"), arg(&a, "%s", in_dir(&d, "o.npy"));
            arg(&a, "--lse"), arg(&a, "%s", in_dir(&d, "lse.npy"));
        }
    }
    for (; extra && *extra; extra++)
        arg(&a, "%s", *extra);
    arg(&a, "--dq"), arg(&a, "%s", in_dir(&d, "dq.npy"));
    arg(&a, "--dk"), arg(&a, "%s", in_dir(&d, "dk.npy"));
    arg(&a, "--dv"), arg(&a, "%s", in_dir(&d, "dv.npy"));
    if (p->sinks)
        arg(&a, "--dsinks"), arg(&a, "%s", in_dir(&d, "ds.npy"));
    if (p->bias)
        arg(&a, "--dbias"), arg(&a, "%s", in_dir(&d, "db.npy"));
    if (comm != MPI_COMM_SELF)
        argl_share(&a);
    cli_result r = cli_argl(comm, &a);
    expect_code(&r, 0);
    if (root) {
        int64_t qs[4] = {p->B, L == 'h' ? p->Hq : p->T, L == 'h' ? p->T : p->Hq, p->D};
        int64_t ks[4] = {p->B, L == 'h' ? p->Hkv : p->S, L == 'h' ? p->S : p->Hkv, p->D};
        int64_t vs[4] = {p->B, ks[1], ks[2], p->Dv};
        float *dq = read_output(in_dir(&d, "dq.npy"), 4, qs);
        float *dk = read_output(in_dir(&d, "dk.npy"), 4, ks);
        float *dv = read_output(in_dir(&d, "dv.npy"), 4, vs);
        float *dqb = to_bthd(dq, L, p->B, p->T, p->Hq, p->D);
        float *dkb = to_bthd(dk, L, p->B, p->S, p->Hkv, p->D);
        float *dvb = to_bthd(dv, L, p->B, p->S, p->Hkv, p->Dv);
        char what[96];
        snprintf(what, sizeof what, "mattn grad --op %s (%d ranks, layout %c)", op,
                 comm == MPI_COMM_SELF ? 1 : tl_size(), L);
        /* o and lse are the reference's rounded to fp32: no widening needed */
        rg_check(what, "dq", dqb, g.dq, g.tol_dq, p->B * p->T * p->Hq * p->D);
        rg_check(what, "dk", dkb, g.dk, g.tol_dk, p->B * p->S * p->Hkv * p->D);
        rg_check(what, "dv", dvb, g.dv, g.tol_dv, p->B * p->S * p->Hkv * p->Dv);
        if (p->sinks) {
            int64_t ss[1] = {p->Hq};
            float *ds = read_output(in_dir(&d, "ds.npy"), 1, ss);
            rg_check(what, "dsinks", ds, g.dsinks, g.tol_dsinks, p->Hq);
            free(ds);
        }
        if (p->bias) {
            int64_t bs[4] = {p->bias_b, p->bias_h, p->T, p->S};
            float *db = read_output(in_dir(&d, "db.npy"), 4, bs);
            rg_check(what, "dbias", db, g.dbias, g.tol_dbias, bs[0] * bs[1] * bs[2] * bs[3]);
            free(db);
        }
        free(dq), free(dk), free(dv), free(dqb), free(dkb), free(dvb);
        dir_free(&d);
    }
    rg_grads_free(&g);
    rg_inputs_free(&in);
    free(dout);
    cli_free(&r);
    argl_free(&a);
}

static void test_grad_single(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(9);
    tc_problem p = make(201, 2, 23, 29, 4, 2, 8, 12);
    p.causal = 1, p.q_offset = 6;
    p.sinks = tl_alloc(sizeof(float) * 4);
    tl_fill(&r, p.sinks, 4, 1.0);
    file_style st = {0}, bh = {.layout = 'h'};
    const char *ops[] = {"vanilla", "flash", "sdpa", "splash", "ring"};
    for (int x = 0; x < 5; x++)
        grad_run(MPI_COMM_SELF, &p, ops[x], x % 2 ? &bh : &st, 1, ARGS("--quiet"));
    p.softcap = 3.0, p.window_left = 5, p.window_right = 1;
    grad_run(MPI_COMM_SELF, &p, "flash", &st, 1, ARGS("--quiet", "--block-q", "8"));
    tc_free(&p);
}

static void test_grad_dist(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(19);
    tc_problem p = make(202, 2, 31, 27, 4, 2, 8, 8);
    p.causal = 1, p.kv_offset = 2;
    p.sinks = tl_alloc(sizeof(float) * 4);
    tl_fill(&r, p.sinks, 4, 1.0);
    add_bias(&p, &r, 1, 4); /* dbias summed over the batch, per head */
    file_style st = {0};
    grad_run(MPI_COMM_WORLD, &p, "flash", &st, 1, ARGS("--quiet", "--mesh", mesh_for("flash")));
    grad_run(MPI_COMM_WORLD, &p, "ring", &st, 1, ARGS("--quiet"));
    grad_run(MPI_COMM_WORLD, &p, "ring", &st, 1, ARGS("--quiet", "--seq-layout", "zigzag"));
    tc_free(&p);
}

/* ------------------------------------------------------------------ errors */

static void expect_all(const argl *a, int code, const char *needle)
{
    cli_result r = cli_argl(MPI_COMM_WORLD, a);
    expect_code(&r, code);
    if (tl_rank() == 0)
        expect_in(r.err, needle, "stderr");
    else
        assert_string_equal(r.out, "");
    cli_free(&r);
}

static void test_errors(void **state)
{
    (void)state;
    tmpdir d = dir_shared();
    tc_problem p = make(300, 1, 9, 9, 2, 1, 8, 8);
    file_style st = {0};
    argl a = {.n = 0};
    arg(&a, "run"), arg(&a, "--op"), arg(&a, "ring");
    if (tl_rank() == 0)
        write_problem(&d, &p, &st, &a);
    argl_share(&a);
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));

    argl b = {.n = 0};
    for (int x = 0; x < a.n; x++)
        arg(&b, "%s", a.v[x]);
    arg(&b, "--mesh"), arg(&b, "%d,1,2", tl_size());
    expect_all(&b, 2, "the product DP*TP*SP must equal the number of ranks");
    argl_free(&b);

    /* a file missing on rank 0 only matters there: exit 1 everywhere */
    if (tl_rank() == 0)
        remove(in_dir(&d, "k.npy"));
    MPI_Barrier(MPI_COMM_WORLD);
    expect_all(&a, 1, "k.npy");
    if (tl_rank() == 0)
        assert_false(exists(in_dir(&d, "o.npy")));

    argl c = {.n = 0};
    arg(&c, "run"), arg(&c, "--op"), arg(&c, "splash"), arg(&c, "--mask-kind"), arg(&c, "dense");
    arg(&c, "--seq"), arg(&c, "16");
    expect_all(&c, 2, "--mask-kind dense needs --mask");
    argl_free(&c);
    arg(&c, "grad"), arg(&c, "--op"), arg(&c, "ring"), arg(&c, "--seq"), arg(&c, "16");
    arg(&c, "--mesh"), arg(&c, "1,1,%d", tl_size() + 1);
    expect_all(&c, 2, "--mesh 1,1,");
    argl_free(&c);

    argl_free(&a);
    tc_free(&p);
    if (tl_rank() == 0)
        dir_free(&d);
}

/* Buffers too large to address, on a mesh of all ranks: exit 1 on every
 * rank, rank 0 naming the buffer, and nobody hangs, whether every rank's
 * shard overflows or only rank 0's (the others hold no batch entry). */
static void test_huge_sizes(void **state)
{
    (void)state;
    const int P = tl_size();
    const int64_t B = 1048576, T = (int64_t)1 << 31;
    char want[160];
    argl a = {.n = 0};
    arg(&a, "run"), arg(&a, "--op"), arg(&a, "flash"), arg(&a, "--mesh"), arg(&a, "%d,1,1", P);
    arg(&a, "--batch=%lld", (long long)B), arg(&a, "--seq=%lld", (long long)T);
    arg(&a, "--heads=256"), arg(&a, "--dim=64"), arg(&a, "--quiet");
    snprintf(want, sizeof want, "the local q [%lld, %lld, 256, 64] is too large",
             (long long)(B / P + (B % P != 0)), (long long)T); /* rank 0's part */
    expect_all(&a, 1, want);
    argl_free(&a);

    arg(&a, "grad"), arg(&a, "--op"), arg(&a, "sdpa"), arg(&a, "--mesh"), arg(&a, "%d,1,1", P);
    arg(&a, "--batch=1"), arg(&a, "--seq=%lld", (long long)T);
    arg(&a, "--heads=65536"), arg(&a, "--dim=65536"), arg(&a, "--quiet");
    expect_all(&a, 1, "the local q [1, 2147483648, 65536, 65536] is too large");
    argl_free(&a);

    arg(&a, "run"), arg(&a, "--op"), arg(&a, "ring"), arg(&a, "--seq-layout"), arg(&a, "zigzag");
    arg(&a, "--batch=%lld", (long long)B), arg(&a, "--seq=%lld", (long long)T);
    arg(&a, "--heads=256"), arg(&a, "--dim=64"), arg(&a, "--quiet");
    const int64_t chunks = 2 * P, first = T / chunks + (T % chunks != 0), last = T / chunks;
    snprintf(want, sizeof want, "the local q [%lld, %lld, 256, 64] is too large", (long long)B,
             (long long)(first + last)); /* zigzag: chunks 0 and 2P-1 */
    expect_all(&a, 1, want);
    argl_free(&a);

    arg(&a, "decode"), arg(&a, "--batch=%lld", (long long)B), arg(&a, "--kv-len=2147483647");
    arg(&a, "--heads=65536"), arg(&a, "--kv-heads=65536"), arg(&a, "--dim=65536");
    arg(&a, "--quiet");
    expect_all(&a, 1, "the key cache [1048576, 2147483647, 65536, 65536] is too large");
    argl_free(&a);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "test_cli_dist: timed out (a hang is a failure)\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(3);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    signal(SIGALRM, on_alarm);
    const char *limit = getenv("TEST_ALARM");
    alarm(limit ? (unsigned)atoi(limit) : 180);
    const struct CMUnitTest spread[] = {
        cmocka_unit_test(test_grad_single),
    };
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_run_ops),
        cmocka_unit_test(test_run_ring_options),
        cmocka_unit_test(test_run_synthetic),
        cmocka_unit_test(test_grad_dist),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_huge_sizes),
    };
    int failed = tl_run_spread("cli grad", spread, sizeof spread / sizeof spread[0]);
    failed += tl_run_all("cli (MPI_COMM_WORLD)", all, sizeof all / sizeof all[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
