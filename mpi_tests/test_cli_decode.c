/* `mattn decode`, run in-process through mattn__cli_main.
 *
 * - each operator (ar, ragged, paged) on small .npy files, its outputs read
 *   back and compared with the float64 reference of test_decode_ref.h built
 *   from the same arrays: empty and length-1 sequences, unaligned starts,
 *   GQA and MQA, Dv != D, window, chunk, soft cap, sinks, shuffled pages
 *   with garbage in unused table entries, mixed prefill/decode/empty paged
 *   sequences, int64 metadata files;
 * - the help text, usage errors (exit 2) and runtime errors (exit 1) with a
 *   clear message and no output file;
 * - synthetic mode's report (kv_bytes counted exactly) and --check;
 * - under MPI_COMM_WORLD (1-4 ranks): the cache split over the ranks gives
 *   the reference answer for each operator, and a bad input seen only by
 *   rank 0 fails every rank with the same status. */
#include "test_cli_common.h"
#include "test_decode_ref.h"

/* ------------------------------------------------------------------ helpers */

/* Appends the space-separated words of `words`. */
static void args_split(argl *a, const char *words)
{
    char *dup = strdup(words), *save = NULL;
    for (char *t = strtok_r(dup, " ", &save); t; t = strtok_r(NULL, " ", &save))
        arg(a, "%s", t);
    free(dup);
}

/* float32 .npy written by hand (independent of the writer under test). */
static void write_f32_hand(const char *path, int ndim, const int64_t *shape, const float *x)
{
    write_npy_typed(path, "<f4", ndim, shape, x, 4);
}

/* int32 metadata, or int64 when wide (the command converts). */
static void write_ints(const char *path, int ndim, const int64_t *shape, const int32_t *x,
                       int wide)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    if (!wide) {
        write_npy_typed(path, "<i4", ndim, shape, x, 4);
        return;
    }
    int64_t *y = tl_alloc(sizeof(int64_t) * (size_t)(n + 1));
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i];
    write_npy_typed(path, "<i8", ndim, shape, y, 8);
    free(y);
}

/* ------------------------------------------------------------------ contiguous problems */

/* A contiguous-cache decode problem: q [B, Hq, D], cache k [B, S, Hkv, D],
 * v [B, S, Hkv, Dv], keys starts[b] <= j < ends[b]. */
typedef struct ccase {
    int64_t B, S, Hq, Hkv, D, Dv;
    float *q, *k, *v, *sinks;
    int32_t *starts, *ends;
    double softcap;
    int64_t window[2], chunk;
} ccase;

static ccase ccase_make(uint64_t seed, int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t D,
                        int64_t Dv, const int32_t *starts, const int32_t *ends)
{
    tl_rng r = tl_rng_make(seed);
    ccase c = {.B = B, .S = S, .Hq = Hq, .Hkv = Hkv, .D = D, .Dv = Dv,
               .window = {-1, -1}};
    c.q = tl_alloc(sizeof(float) * (size_t)(B * Hq * D));
    c.k = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * D));
    c.v = tl_alloc(sizeof(float) * (size_t)(B * S * Hkv * Dv));
    tl_fill(&r, c.q, B * Hq * D, 2.0);
    tl_fill(&r, c.k, B * S * Hkv * D, 2.0);
    tl_fill(&r, c.v, B * S * Hkv * Dv, 1.0);
    c.starts = tl_alloc(sizeof(int32_t) * (size_t)B);
    c.ends = tl_alloc(sizeof(int32_t) * (size_t)B);
    memcpy(c.starts, starts, sizeof(int32_t) * (size_t)B);
    memcpy(c.ends, ends, sizeof(int32_t) * (size_t)B);
    return c;
}

static void ccase_free(ccase *c)
{
    free(c->q), free(c->k), free(c->v), free(c->sinks), free(c->starts), free(c->ends);
}

/* Writes the problem to d and appends its file options. q4: q as [B,1,Hq,D]. */
static void ccase_write(const tmpdir *d, const ccase *c, int ar, int q4, int wide, argl *a)
{
    int64_t q3[3] = {c->B, c->Hq, c->D}, q4s[4] = {c->B, 1, c->Hq, c->D};
    int64_t ks[4] = {c->B, c->S, c->Hkv, c->D}, vs[4] = {c->B, c->S, c->Hkv, c->Dv};
    int64_t bs[1] = {c->B}, hs[1] = {c->Hq};
    write_f32_hand(in_dir(d, "q.npy"), q4 ? 4 : 3, q4 ? q4s : q3, c->q);
    write_f32_hand(in_dir(d, "k.npy"), 4, ks, c->k);
    write_f32_hand(in_dir(d, "v.npy"), 4, vs, c->v);
    write_ints(in_dir(d, "starts.npy"), 1, bs, c->starts, wide);
    write_ints(in_dir(d, "ends.npy"), 1, bs, c->ends, wide);
    arg(a, "--q"), arg(a, "%s", in_dir(d, "q.npy"));
    arg(a, "--k"), arg(a, "%s", in_dir(d, "k.npy"));
    arg(a, "--v"), arg(a, "%s", in_dir(d, "v.npy"));
    arg(a, "--starts"), arg(a, "%s", in_dir(d, "starts.npy"));
    arg(a, ar ? "--index" : "--ends"), arg(a, "%s", in_dir(d, "ends.npy"));
    if (c->sinks) {
        write_f32_hand(in_dir(d, "sinks.npy"), 1, hs, c->sinks);
        arg(a, "--sinks"), arg(a, "%s", in_dir(d, "sinks.npy"));
    }
    if (c->softcap > 0)
        arg(a, "--softcap"), arg(a, "%.9g", c->softcap);
    if (c->window[0] >= 0 || c->window[1] >= 0)
        arg(a, "--window"), arg(a, "%lld,%lld", (long long)c->window[0], (long long)c->window[1]);
    if (c->chunk > 0)
        arg(a, "--chunk"), arg(a, "%lld", (long long)c->chunk);
}

/* Checks o, lse (and m, l when given) of a contiguous run. */
static void ccase_check(const char *what, const ccase *c, const float *o, const float *lse,
                        const float *m, const float *l, int64_t merges)
{
    dref_opts op = {.scale = (double)(float)(1.0 / sqrt((double)c->D)),
                    .softcap = c->softcap, .window_left = c->window[0],
                    .window_right = c->window[1], .chunk = c->chunk, .sinks = c->sinks,
                    .merges = merges};
    double *ro = tl_alloc(sizeof(double) * (size_t)c->Dv);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->Hq; h++) {
            dref_row r;
            int64_t x = b * c->Hq + h;
            dref_row_compute(&op, c->q + x * c->D, c->k + b * c->S * c->Hkv * c->D,
                             c->v + b * c->S * c->Hkv * c->Dv, 0, c->Hq, c->Hkv, c->D, c->Dv, h,
                             c->ends[b] - 1, c->starts[b], c->ends[b], ro, &r);
            dref_check_row(what, b, 0, h, o + x * c->Dv, ro, c->Dv, lse ? lse + x : NULL,
                           m ? m + x : NULL, l ? l + x : NULL, &r);
        }
    free(ro);
}

/* Runs `mattn decode --op ar|ragged` on c over comm and checks on rank 0. */
static void ccase_run(MPI_Comm comm, const ccase *c, int ar, int q4, int wide,
                      const char *extra)
{
    int rank = 0, P = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    tmpdir d = dir_make();
    argl a = {.n = 0};
    arg(&a, "decode"), arg(&a, "--op"), arg(&a, ar ? "ar" : "ragged");
    ccase_write(&d, c, ar, q4, wide, &a);
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    arg(&a, "--lse"), arg(&a, "%s", in_dir(&d, "lse.npy"));
    if (!ar) {
        arg(&a, "--m"), arg(&a, "%s", in_dir(&d, "m.npy"));
        arg(&a, "--l"), arg(&a, "%s", in_dir(&d, "l.npy"));
    }
    if (extra)
        args_split(&a, extra);
    cli_result r = cli_argl(comm, &a);
    expect_code(&r, 0);
    if (rank == 0) {
        int64_t o3[3] = {c->B, c->Hq, c->Dv}, o4[4] = {c->B, 1, c->Hq, c->Dv}, st[2] = {c->B, c->Hq};
        float *o = read_output(in_dir(&d, "o.npy"), q4 ? 4 : 3, q4 ? o4 : o3);
        float *lse = read_output(in_dir(&d, "lse.npy"), 2, st);
        float *m = ar ? NULL : read_output(in_dir(&d, "m.npy"), 2, st);
        float *l = ar ? NULL : read_output(in_dir(&d, "l.npy"), 2, st);
        ccase_check(ar ? "cli ar" : "cli ragged", c, o, lse, m, l, c->S / 16 + P + 2);
        free(o), free(lse), free(m), free(l);
    }
    cli_free(&r);
    argl_free(&a);
    dir_free(&d);
}

/* B = 6: an empty range, a length-1 range, unaligned starts, a full one. */
static ccase ccase_standard(uint64_t seed, int64_t Hq, int64_t Hkv, int64_t D, int64_t Dv)
{
    const int32_t starts[6] = {0, 5, 13, 0, 77, 40};
    const int32_t ends[6] = {100, 5, 14, 57, 100, 41};
    return ccase_make(seed, 6, 100, Hq, Hkv, D, Dv, starts, ends);
}

static void test_ragged_files(void **state)
{
    (void)state;
    ccase c = ccase_standard(1, 8, 2, 16, 12); /* GQA, Dv != D */
    ccase_run(MPI_COMM_SELF, &c, 0, 0, 0, NULL);
    c.softcap = 3.0;
    c.sinks = tl_alloc(sizeof(float) * 8);
    tl_rng r = tl_rng_make(9);
    tl_fill(&r, c.sinks, 8, 1.0);
    c.window[0] = 20, c.window[1] = 0;
    ccase_run(MPI_COMM_SELF, &c, 0, 1, 1, "--block-kv 16 --threads 2"); /* split-KV pieces */
    ccase_free(&c);
}

/* A head size of 2^20 + 3 values (an 8 MiB v.npy): --check's reference
 * keeps a row of Dv doubles, which must not live on the stack. */
static void test_wide_values(void **state)
{
    (void)state;
    const int32_t starts[1] = {0}, ends[1] = {2};
    ccase c = ccase_make(3, 1, 2, 1, 1, 4, (1 << 20) + 3, starts, ends);
    ccase_run(MPI_COMM_SELF, &c, 0, 0, 0, "--check --quiet");
    ccase_free(&c);
}

static void test_ar_files(void **state)
{
    (void)state;
    ccase c = ccase_standard(2, 4, 1, 8, 8); /* MQA */
    ccase_run(MPI_COMM_SELF, &c, 1, 1, 0, NULL);
    c.chunk = 32;
    ccase_run(MPI_COMM_SELF, &c, 1, 0, 1, "--block-kv 8");
    ccase_free(&c);
}

/* ------------------------------------------------------------------ paged problems */

/* 4 sequences: prefill (q_len = kv_len), decode, chunked prefill, empty. */
static pcase pcase_standard(uint64_t seed, int64_t Hq, int64_t Hkv)
{
    const int64_t total[4] = {9, 70, 45, 0}, qn[4] = {9, 1, 6, 0};
    return pcase_make(seed, 4, total, qn, Hq, Hkv, 8, 6);
}

static void pcase_write(const tmpdir *d, const pcase *c, const mattn_paged_kv *kv, int wide,
                        argl *a)
{
    int64_t qs[3] = {c->T, c->Hq, c->D};
    int64_t ks[4] = {kv->k_pages.batch, kv->k_pages.seq, c->Hkv, c->D};
    int64_t vs[4] = {kv->k_pages.batch, kv->k_pages.seq, c->Hkv, c->Dv};
    int64_t ts[2] = {c->ns, kv->max_pages}, ls[1] = {c->ns}, cs[1] = {c->ns + 1};
    write_f32_hand(in_dir(d, "q.npy"), 3, qs, c->q);
    write_f32_hand(in_dir(d, "kp.npy"), 4, ks, kv->k_pages.data);
    write_f32_hand(in_dir(d, "vp.npy"), 4, vs, kv->v_pages.data);
    write_ints(in_dir(d, "table.npy"), 2, ts, kv->page_table, wide);
    write_ints(in_dir(d, "lens.npy"), 1, ls, kv->kv_lens, wide);
    write_ints(in_dir(d, "cu.npy"), 1, cs, c->cu, wide);
    arg(a, "--q"), arg(a, "%s", in_dir(d, "q.npy"));
    arg(a, "--k"), arg(a, "%s", in_dir(d, "kp.npy"));
    arg(a, "--v"), arg(a, "%s", in_dir(d, "vp.npy"));
    arg(a, "--page-table"), arg(a, "%s", in_dir(d, "table.npy"));
    arg(a, "--kv-lens"), arg(a, "%s", in_dir(d, "lens.npy"));
    arg(a, "--cu-q-lens"), arg(a, "%s", in_dir(d, "cu.npy"));
    if (c->opts.sinks) {
        int64_t hs[1] = {c->Hq};
        write_f32_hand(in_dir(d, "sinks.npy"), 1, hs, c->opts.sinks);
        arg(a, "--sinks"), arg(a, "%s", in_dir(d, "sinks.npy"));
    }
    if (c->opts.softcap > 0)
        arg(a, "--softcap"), arg(a, "%.9g", (double)c->opts.softcap);
    if (c->opts.window_left >= 0 || c->opts.window_right >= 0)
        arg(a, "--window"), arg(a, "%lld,%lld", (long long)c->opts.window_left,
                                (long long)c->opts.window_right);
}

static void pcase_run(MPI_Comm comm, const pcase *c, int64_t ps, int wide, uint64_t seed)
{
    int rank = 0, P = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    mattn_paged_kv kv;
    pcase_pages(c, ps, NULL, NULL, seed, 0, &kv); /* shuffled, NaN in unused slots */
    tmpdir d = dir_make();
    argl a = {.n = 0};
    arg(&a, "decode"), arg(&a, "--op"), arg(&a, "paged");
    pcase_write(&d, c, &kv, wide, &a);
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    arg(&a, "--lse"), arg(&a, "%s", in_dir(&d, "lse.npy"));
    cli_result r = cli_argl(comm, &a);
    expect_code(&r, 0);
    if (rank == 0) {
        int64_t os[3] = {c->T, c->Hq, c->Dv}, ls[2] = {c->Hq, c->T};
        float *o = read_output(in_dir(&d, "o.npy"), 3, os);
        float *lse = read_output(in_dir(&d, "lse.npy"), 2, ls);
        pcase_check("cli paged", c, o, lse, 2 + P + 2);
        free(o), free(lse);
    }
    cli_free(&r);
    argl_free(&a);
    dir_free(&d);
    pcase_pages_free(&kv);
}

static void test_paged_files(void **state)
{
    (void)state;
    pcase c = pcase_standard(3, 6, 3);
    pcase_run(MPI_COMM_SELF, &c, 4, 0, 11);
    float sinks[6] = {0.5f, -1.0f, 2.0f, 0.0f, -3.0f, 1.0f};
    c.opts.sinks = sinks;
    c.opts.softcap = 2.5f;
    c.opts.window_left = 7, c.opts.window_right = 0;
    pcase_run(MPI_COMM_SELF, &c, 16, 1, 12);
    pcase_free(&c);
}

/* ------------------------------------------------------------------ help, errors */

static void test_help(void **state)
{
    (void)state;
    argl a = {.n = 0};
    arg(&a, "decode"), arg(&a, "--help");
    cli_result r = cli_argl(MPI_COMM_SELF, &a);
    expect_code(&r, 0);
    const char *opts[] = {"--op", "--q", "--k", "--v", "--starts", "--index", "--ends",
                          "--page-table", "--kv-lens", "--cu-q-lens", "--out", "--lse", "--m",
                          "--l", "--window", "--chunk", "--scale", "--softcap", "--sinks",
                          "--threads", "--block-kv", "--warmup", "--repeat", "--quiet",
                          "--batch", "--kv-len", "--heads", "--kv-heads", "--dim", "--dv",
                          "--page-size", "--q-len", "--seed", "--check", "--check-rows"};
    for (size_t x = 0; x < sizeof opts / sizeof *opts; x++)
        expect_in(r.out, opts[x], "decode --help");
    cli_free(&r);
    argl_free(&a);
    arg(&a, "--help");
    r = cli_argl(MPI_COMM_SELF, &a);
    expect_in(r.out, "decode", "mattn --help");
    cli_free(&r);
    argl_free(&a);
}

/* Runs decode with `args` (space-separated; @ expands to the directory) and
 * expects `code`, `needle` on stderr and no file named o.npy afterwards. */
static void expect_error(const tmpdir *d, int code, const char *needle, const char *args)
{
    argl a = {.n = 0};
    arg(&a, "decode");
    char *dup = strdup(args), *save = NULL;
    for (char *t = strtok_r(dup, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        if (t[0] == '@')
            arg(&a, "%s", in_dir(d, t + 1));
        else
            arg(&a, "%s", t);
    }
    free(dup);
    cli_result r = cli_argl(MPI_COMM_SELF, &a);
    expect_code(&r, code);
    expect_in(r.err, needle, "stderr");
    assert_false(exists(in_dir(d, "o.npy")));
    cli_free(&r);
    argl_free(&a);
}

static void test_errors(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    ccase c = ccase_standard(4, 4, 2, 8, 8);
    argl a = {.n = 0};
    ccase_write(&d, &c, 0, 0, 0, &a);
    argl_free(&a);
    const char *cf = "--q @q.npy --k @k.npy --v @v.npy";
    char buf[512];

    /* usage: exit 2 */
    expect_error(&d, 2, "go together", "--q @q.npy --k @k.npy --out @o.npy");
    snprintf(buf, sizeof buf, "--op ragged %s --out @o.npy", cf);
    expect_error(&d, 2, "needs --ends", buf);
    snprintf(buf, sizeof buf, "--op ar %s --ends @ends.npy --out @o.npy", cf);
    expect_error(&d, 2, "--ends belongs to --op ragged", buf);
    snprintf(buf, sizeof buf, "--op ar %s --index @ends.npy --m @m.npy --out @o.npy", cf);
    expect_error(&d, 2, "need --op ragged", buf);
    snprintf(buf, sizeof buf, "--op ragged %s --ends @ends.npy --batch 3", cf);
    expect_error(&d, 2, "synthetic problem", buf);
    expect_error(&d, 2, "--op paged", "--op ragged --page-size 8");
    expect_error(&d, 2, "two outputs", "--out @o.npy --lse @o.npy");
    expect_error(&d, 2, "not a multiple", "--heads 6 --kv-heads 4");
    expect_error(&d, 2, "unknown option", "--frobnicate 3");

    /* runtime: exit 1, message, no output */
    snprintf(buf, sizeof buf, "--op ragged %s --ends @starts.npy --starts @ends.npy --out @o.npy",
             cf); /* ends before starts */
    expect_error(&d, 1, "MATTN_ERR_", buf);
    snprintf(buf, sizeof buf, "--op ragged --q @k.npy --k @k.npy --v @v.npy --ends @ends.npy "
                              "--out @o.npy");
    expect_error(&d, 1, "q has shape", buf);
    snprintf(buf, sizeof buf, "--op ragged %s --ends @nothere.npy --out @o.npy", cf);
    expect_error(&d, 1, "nothere.npy", buf);
    snprintf(buf, sizeof buf, "--op ragged %s --ends @q.npy --out @o.npy", cf);
    expect_error(&d, 1, "int32 or int64", buf);
    snprintf(buf, sizeof buf, "--op ragged %s --ends @ends.npy --out %s/no/dir/o.npy", cf, d.path);
    expect_error(&d, 1, "no/dir", buf);
    snprintf(buf, sizeof buf, "--op ragged %s --ends @ends.npy --sinks @ends.npy --out @o.npy", cf);
    expect_error(&d, 1, "sinks", buf);

    /* paged metadata: a page id out of range, a length beyond the table */
    pcase p = pcase_standard(5, 4, 2);
    mattn_paged_kv kv;
    pcase_pages(&p, 8, NULL, NULL, 6, 0, &kv);
    argl_free(&a);
    pcase_write(&d, &p, &kv, 0, &a);
    argl_free(&a);
    int64_t ts[2] = {p.ns, kv.max_pages}, ls[1] = {p.ns};
    int32_t *bad = tl_alloc(sizeof(int32_t) * (size_t)(p.ns * kv.max_pages));
    memcpy(bad, kv.page_table, sizeof(int32_t) * (size_t)(p.ns * kv.max_pages));
    bad[1 * kv.max_pages + 2] = (int32_t)kv.k_pages.batch; /* sequence 1 uses page 2 */
    write_ints(in_dir(&d, "badtable.npy"), 2, ts, bad, 0);
    const char *pf = "--op paged --q @q.npy --k @kp.npy --v @vp.npy --cu-q-lens @cu.npy "
                     "--out @o.npy";
    snprintf(buf, sizeof buf, "%s --page-table @badtable.npy --kv-lens @lens.npy", pf);
    expect_error(&d, 1, "is not a page id", buf);
    int32_t lens[4];
    memcpy(lens, kv.kv_lens, sizeof lens);
    lens[2] = (int32_t)(kv.max_pages * 8 + 1);
    write_ints(in_dir(&d, "badlens.npy"), 1, ls, lens, 0);
    snprintf(buf, sizeof buf, "%s --page-table @table.npy --kv-lens @badlens.npy", pf);
    expect_error(&d, 1, "max_pages * page_size", buf);
    snprintf(buf, sizeof buf, "%s --page-table @table.npy --kv-lens @cu.npy", pf);
    expect_error(&d, 1, "must be [4]", buf);
    free(bad);
    pcase_pages_free(&kv);
    pcase_free(&p);
    ccase_free(&c);
    dir_free(&d);
}

/* ------------------------------------------------------------------ synthetic */

static void test_synthetic(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    const char *ops[3] = {"ar", "ragged", "paged"};
    for (int x = 0; x < 3; x++) {
        argl a = {.n = 0};
        arg(&a, "decode"), arg(&a, "--op"), arg(&a, "%s", ops[x]);
        arg(&a, "--batch"), arg(&a, "3"), arg(&a, "--kv-len"), arg(&a, "300");
        arg(&a, "--heads"), arg(&a, "4"), arg(&a, "--kv-heads"), arg(&a, "2");
        arg(&a, "--dim"), arg(&a, "16"), arg(&a, "--dv"), arg(&a, "8");
        arg(&a, "--window"), arg(&a, "99,0"), arg(&a, "--check"), arg(&a, "--quiet");
        arg(&a, "--repeat"), arg(&a, "2"), arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
        if (x == 2)
            arg(&a, "--q-len"), arg(&a, "4"), arg(&a, "--page-size"), arg(&a, "8");
        cli_result r = cli_argl(MPI_COMM_SELF, &a);
        expect_code(&r, 0);
        expect_in(r.out, "check: pass", ops[x]);
        /* window 99: the last query of each sequence sees 100 keys; paged
         * queries at 296..299 see [197, 300): 103 positions */
        double keys = x == 2 ? 3 * 103 : 3 * 100;
        assert_true(report_value(r.out, "kv_bytes") == keys * 4 * 2 * (16 + 8));
        assert_true(report_value(r.out, "queries") == (x == 2 ? 12 : 3));
        assert_true(report_value(r.out, "gbps") > 0);
        assert_true(report_value(r.out, "tokens_per_s") > 0);
        assert_true(report_value(r.out, "max_err_over_bound") <= 1.0);
        int64_t os[3] = {x == 2 ? 12 : 3, 4, 8};
        free(read_output(in_dir(&d, "o.npy"), 3, os));
        remove(in_dir(&d, "o.npy"));
        cli_free(&r);
        argl_free(&a);
    }
    dir_free(&d);
}

/* ------------------------------------------------------------------ across ranks */

static void test_world(void **state)
{
    (void)state;
    ccase c = ccase_standard(7, 8, 4, 16, 8);
    ccase_run(MPI_COMM_WORLD, &c, 0, 0, 0, NULL);
    ccase_run(MPI_COMM_WORLD, &c, 1, 1, 0, "--block-kv 16");
    c.sinks = tl_alloc(sizeof(float) * 8);
    tl_rng r = tl_rng_make(8);
    tl_fill(&r, c.sinks, 8, 2.0);
    c.window[0] = 30, c.window[1] = 0;
    ccase_run(MPI_COMM_WORLD, &c, 0, 1, 1, "--threads 2");
    ccase_free(&c);

    pcase p = pcase_standard(8, 4, 1); /* MQA */
    pcase_run(MPI_COMM_WORLD, &p, 4, 0, 21);
    float sinks[4] = {1.0f, -0.5f, 0.0f, 2.0f};
    p.opts.sinks = sinks;
    p.opts.window_left = 11, p.opts.window_right = 0;
    pcase_run(MPI_COMM_WORLD, &p, 16, 1, 22);
    pcase_free(&p);
}

/* A bad input only rank 0 reads: every rank exits 1, nothing written. */
static void test_world_errors(void **state)
{
    (void)state;
    int rank = tl_rank();
    tmpdir d = dir_make();
    pcase p = pcase_standard(9, 4, 2);
    mattn_paged_kv kv;
    pcase_pages(&p, 8, NULL, NULL, 6, 0, &kv);
    argl a = {.n = 0};
    arg(&a, "decode"), arg(&a, "--op"), arg(&a, "paged");
    pcase_write(&d, &p, &kv, 0, &a);
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    if (rank == 0) { /* a page id out of range */
        int64_t ts[2] = {p.ns, kv.max_pages};
        int32_t *bad = tl_alloc(sizeof(int32_t) * (size_t)(p.ns * kv.max_pages));
        memcpy(bad, kv.page_table, sizeof(int32_t) * (size_t)(p.ns * kv.max_pages));
        bad[1 * kv.max_pages + 0] = -1;
        write_ints(in_dir(&d, "table.npy"), 2, ts, bad, 0);
        free(bad);
    }
    cli_result r = cli_argl(MPI_COMM_WORLD, &a);
    expect_code(&r, 1);
    if (rank == 0)
        expect_in(r.err, "is not a page id", "stderr");
    else
        assert_string_equal(r.err, "");
    assert_false(exists(in_dir(&d, "o.npy")));
    cli_free(&r);
    argl_free(&a);

    /* synthetic under every rank: report on rank 0 only */
    arg(&a, "decode"), arg(&a, "--op"), arg(&a, "ar"), arg(&a, "--batch"), arg(&a, "2");
    arg(&a, "--kv-len"), arg(&a, "50"), arg(&a, "--heads"), arg(&a, "4"), arg(&a, "--kv-heads");
    arg(&a, "1"), arg(&a, "--dim"), arg(&a, "8"), arg(&a, "--check"), arg(&a, "--quiet");
    r = cli_argl(MPI_COMM_WORLD, &a);
    expect_code(&r, 0);
    if (rank == 0) {
        expect_in(r.out, "check: pass", "report");
        assert_true(report_value(r.out, "ranks") == tl_size());
    } else {
        assert_string_equal(r.out, "");
    }
    cli_free(&r);
    argl_free(&a);
    pcase_pages_free(&kv);
    pcase_free(&p);
    dir_free(&d);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest spread[] = {
        cmocka_unit_test(test_ragged_files), cmocka_unit_test(test_ar_files),
        cmocka_unit_test(test_wide_values),
        cmocka_unit_test(test_paged_files),  cmocka_unit_test(test_help),
        cmocka_unit_test(test_errors),       cmocka_unit_test(test_synthetic),
    };
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_world),
        cmocka_unit_test(test_world_errors),
    };
    int failed = tl_run_spread("cli decode", spread, sizeof spread / sizeof spread[0]);
    failed += tl_run_all("cli decode (MPI_COMM_WORLD)", all, sizeof all / sizeof all[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
