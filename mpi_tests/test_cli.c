/* The mattn command, run in-process through mattn__cli_main.
 *
 * - `mattn run` on .npy inputs for each operator and every option, its
 *   outputs read back and compared with the testlib float64 reference built
 *   from the same arrays;
 * - the help texts (every option is documented), usage errors (exit 2),
 *   runtime errors (exit 1) with a clear message and no output file;
 * - synthetic mode: the report (allowed pairs counted exactly, --check);
 * - the --check reference itself: it agrees with testlib's and catches a
 *   wrong result;
 * - --op splash with each --mask-kind, block sizes that do not divide the
 *   lengths, against the same reference;
 * - under MPI_COMM_WORLD every rank returns rank 0's status (the
 *   distributed runs themselves are test_cli_dist.c).
 * Single-rank tests are spread over the ranks, each in its own directory. */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/npy.h"
#include "cli/reference.h"
#include "common/testlib.h"
#include "test_cli_common.h"

/* ------------------------------------------------------------------ runs on files */

static void test_run_basic(void **state)
{
    (void)state;
    tc_problem p = make(1, 2, 37, 45, 3, 3, 16, 16);
    file_style st = {0};
    run_all_ops(&p, &st);
    tc_free(&p);
}

static void test_run_gqa_bhtd(void **state)
{
    (void)state;
    tc_problem p = make(2, 2, 29, 41, 6, 2, 24, 40); /* GQA, Dv != D */
    file_style st = {.layout = 'h'};
    run_all_ops(&p, &st);
    p.causal = 1;
    file_style t = {.layout = 't'};
    run_and_compare(&p, "flash", &t, 0);
    tc_free(&p);
}

static void test_run_structure(void **state)
{
    (void)state;
    file_style st = {0};
    tc_problem p = make(3, 1, 70, 90, 4, 1, 16, 16); /* MQA */
    p.causal = 1, p.q_offset = 20, p.window_left = 13, p.window_right = 2;
    run_all_ops(&p, &st);
    p.causal = 0, p.window_left = 4, p.window_right = 9; /* both sides matter */
    run_and_compare(&p, "flash", &st, 0);
    p.window_left = -1, p.window_right = 0;
    run_and_compare(&p, "vanilla", &st, 0);
    p.window_left = -1, p.window_right = -1;
    p.chunk = 16, p.q_offset = -7, p.kv_offset = 5; /* negative positions */
    run_and_compare(&p, "flash", &st, 0);
    p.causal = 1, p.q_offset = -10, p.kv_offset = 0; /* first rows fully masked */
    run_and_compare(&p, "sdpa", &st, 0);
    run_and_compare(&p, "vanilla", &st, 1);
    tc_free(&p);
}

static void test_run_segments_mask(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(4);
    tc_problem p = tc_make(&r, 2, 33, 47, 4, 2, 16, 16, 1.0);
    add_segments(&p, &r);
    file_style i32 = {0}, i64 = {.i64_segments = 1};
    run_and_compare(&p, "vanilla", &i32, 0);
    run_and_compare(&p, "flash", &i64, 0);
    free(p.q_seg), free(p.kv_seg);
    p.q_seg = p.kv_seg = NULL;
    /* Masks in every accepted rank and broadcast, uint8 and bool. */
    add_mask(&p, &r, 2, 4);
    file_style m4 = {.bool_mask = 1};
    run_and_compare(&p, "flash", &m4, 0);
    free(p.mask);
    add_mask(&p, &r, 1, 4);
    file_style m3 = {.mask_ndim = 3};
    run_and_compare(&p, "sdpa", &m3, 0);
    run_and_compare(&p, "vanilla", &m4, 0);
    free(p.mask);
    add_mask(&p, &r, 1, 1);
    file_style m2 = {.mask_ndim = 2, .bool_mask = 1, .layout = 'h'};
    run_all_ops(&p, &m2);
    tc_free(&p);
}

static void test_run_logits(void **state)
{
    (void)state;
    tl_rng r = tl_rng_make(5);
    tc_problem p = tc_make(&r, 2, 31, 43, 4, 2, 16, 16, 2.0);
    add_bias(&p, &r, 2, 1);
    p.sinks = tl_alloc(sizeof(float) * 4);
    tl_fill(&r, p.sinks, 4, 3.0);
    p.softcap = 4.5;
    p.scale = 0.3;
    file_style f64 = {.f64 = 1}, f32 = {0};
    run_all_ops(&p, &f64); /* float64 q, k, v, bias, sinks are converted */
    free(p.bias);
    add_bias(&p, &r, 1, 1);
    file_style b2 = {.mask_ndim = 2};
    run_and_compare(&p, "flash", &b2, 0);
    p.scale = -1.5;
    run_and_compare(&p, "vanilla", &f32, 1);
    tc_free(&p);
}

static void test_run_dropout(void **state)
{
    (void)state;
    tc_problem p = make(6, 2, 37, 45, 4, 2, 16, 16);
    p.dropout_p = 0.3f, p.seed = 1234;
    file_style st = {0}, h = {.layout = 'h'};
    run_all_ops(&p, &st);
    p.dropout_p = 0.85f, p.seed = 18446744073709551557ULL, p.causal = 1;
    run_and_compare(&p, "flash", &h, 0);
    run_and_compare(&p, "vanilla", &st, 1); /* weights are before dropout */
    tc_free(&p);
}

static void test_run_sizes(void **state)
{
    (void)state;
    file_style st = {0};
    tc_problem p = make(7, 1, 1, 1, 1, 1, 1, 1);
    run_all_ops(&p, &st);
    tc_free(&p);
    p = make(8, 2, 5, 0, 2, 2, 8, 8); /* S = 0: every row masked */
    run_all_ops(&p, &st);
    tc_free(&p);
    p = make(9, 0, 5, 5, 2, 2, 8, 8); /* B = 0 */
    run_all_ops(&p, &st);
    tc_free(&p);
    p = make(10, 1, 300, 200, 2, 1, 8, 8); /* several flash blocks */
    p.causal = 1, p.q_offset = -100;
    run_and_compare(&p, "flash", &st, 0);
    tc_free(&p);
}

/* splash: the mask object built from --mask-kind (or from the options), in
 * blocks that do not divide T = 37, S = 45, against the float64 reference
 * of the same predicates. */
#define SPLASH_ARGS(...) (const char *const[]){"--block-q", "16", "--block-kv", "8", __VA_ARGS__, NULL}
static void test_run_splash(void **state)
{
    (void)state;
    file_style st = {0};
    tl_rng r = tl_rng_make(77);
    tc_problem p = make(30, 2, 37, 45, 4, 2, 16, 12);
    run_and_compare_ex(&p, "splash", &st, 0, SPLASH_ARGS("--mask-kind", "full"));
    p.causal = 1, p.q_offset = 8;
    run_and_compare_ex(&p, "splash", &st, 0, SPLASH_ARGS("--quiet"));
    run_and_compare_ex(&p, "splash", &st, 0, SPLASH_ARGS("--mask-kind", "causal"));
    p.causal = 0, p.q_offset = 0, p.window_left = 5, p.window_right = 3;
    run_and_compare_ex(&p, "splash", &st, 0, SPLASH_ARGS("--mask-kind", "local"));
    p.window_left = p.window_right = -1, p.causal = 1, p.chunk = 8, p.kv_offset = 3;
    run_and_compare_ex(&p, "splash", &st, 0, SPLASH_ARGS("--mask-kind", "chunked"));
    p.causal = 0, p.chunk = 0, p.kv_offset = 0;
    add_mask(&p, &r, 1, 1); /* [T,S]: one dense mask object */
    file_style st2 = {.mask_ndim = 2};
    run_and_compare_ex(&p, "splash", &st2, 0, SPLASH_ARGS("--mask-kind", "dense"));
    free(p.mask);
    add_mask(&p, &r, 1, 4); /* per q head */
    run_and_compare_ex(&p, "splash", &st, 0, SPLASH_ARGS("--mask-kind", "dense"));
    free(p.mask);
    add_mask(&p, &r, 2, 1); /* per batch entry: stays an option */
    p.window_left = 9, p.window_right = 0;
    run_and_compare_ex(&p, "splash", &st, 0, SPLASH_ARGS("--mask-kind", "dense"));
    /* with everything else SPEC 3-4 has */
    add_segments(&p, &r);
    p.sinks = tl_alloc(sizeof(float) * 4);
    tl_fill(&r, p.sinks, 4, 1.0);
    p.softcap = 3.0, p.dropout_p = 0.25f, p.seed = 5;
    file_style bh = {.layout = 'h'};
    run_and_compare_ex(&p, "splash", &bh, 0, SPLASH_ARGS("--quiet"));
    tc_free(&p);
}

/* ------------------------------------------------------------------ help */

static const char *const RUN_OPTIONS[] = {
    "--op", "--q", "--k", "--v", "--out", "--lse", "--weights", "--layout", "--causal",
    "--window", "--chunk", "--q-offset", "--kv-offset", "--q-segments", "--kv-segments",
    "--mask", "--scale", "--softcap", "--bias", "--sinks", "--dropout", "--seed", "--threads",
    "--block-q", "--block-kv", "--warmup", "--repeat", "--quiet", "--batch", "--seq",
    "--kv-seq", "--heads", "--kv-heads", "--dim", "--dv", "--check", "--check-rows",
    "--mask-kind", "--mesh", "--seq-layout", "--comm",
};

static void expect_lines_fit(const char *text)
{
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        if (n > 100)
            fail_msg("help line longer than 100 columns: %.*s", (int)n, p);
        p += n + (p[n] == '\n');
    }
}

static void test_help(void **state)
{
    (void)state;
    cli_result r = CLI("--help");
    expect_code(&r, 0);
    expect_in(r.out, "usage: mattn", "mattn --help");
    expect_in(r.out, "\n  run ", "mattn --help");
    expect_in(r.out, "--version", "mattn --help");
    expect_in(r.out, "mattn help <command>", "mattn --help");
    expect_in(r.out, "Exit status", "mattn --help");
    expect_lines_fit(r.out);
    assert_string_equal(r.err, "");
    cli_free(&r);

    r = CLI("run", "--help");
    expect_code(&r, 0);
    for (size_t x = 0; x < sizeof RUN_OPTIONS / sizeof *RUN_OPTIONS; x++) {
        char line[48]; /* each option starts its own line */
        snprintf(line, sizeof line, "\n  %s ", RUN_OPTIONS[x]);
        char flag[48];
        snprintf(flag, sizeof flag, "\n  %s\n", RUN_OPTIONS[x]);
        if (!strstr(r.out, line) && !strstr(r.out, flag))
            fail_msg("mattn run --help does not document %s", RUN_OPTIONS[x]);
    }
    /* The one-line SPEC semantics and defaults. */
    expect_in(r.out, "inclusive on both sides", "run --help");
    expect_in(r.out, "-1 = that side", "run --help");
    expect_in(r.out, "default 1/sqrt(D)", "run --help");
    expect_in(r.out, "(default sdpa)", "run --help");
    expect_in(r.out, "[0,1)", "run --help");
    expect_lines_fit(r.out);
    char *run_help = strdup(r.out);
    cli_free(&r);

    /* The same through "help run", "-h" and with other options around. */
    r = CLI("help", "run");
    expect_code(&r, 0);
    assert_string_equal(r.out, run_help);
    cli_free(&r);
    r = CLI("run", "--bogus", "-h");
    expect_code(&r, 0);
    assert_string_equal(r.out, run_help);
    cli_free(&r);
    free(run_help);

    r = CLI("--version");
    expect_code(&r, 0);
    char v[64];
    snprintf(v, sizeof v, "mattn: %d.%d.%d\n", MATTN_VERSION_MAJOR, MATTN_VERSION_MINOR,
             MATTN_VERSION_PATCH);
    expect_in(r.out, v, "--version");
    expect_in(r.out, "library: ", "--version");
    expect_in(r.out, "openblas_core: ", "--version");
    expect_in(r.out, "mpi: ", "--version");
    cli_free(&r);
}

/* ------------------------------------------------------------------ errors */

/* A small valid problem in d, for the error tests. */
static void write_valid(const tmpdir *d)
{
    tc_problem p = make(20, 1, 6, 7, 4, 2, 8, 8);
    argl a = {.n = 0};
    file_style st = {0};
    write_problem(d, &p, &st, &a);
    argl_free(&a);
    tc_free(&p);
}

/* Runs `mattn run` with q/k/v from d plus `extra`, expecting `code` and
 * `needle` in stderr, and no output file (nor a temporary) afterwards. */
static void expect_run_error(const tmpdir *d, int code, const char *needle,
                             const char *const *extra)
{
    argl a = {.n = 0};
    arg(&a, "run");
    int has_q = 0;
    for (const char *const *e = extra; *e; e++) {
        has_q |= strcmp(*e, "--q") == 0 || strcmp(*e, "--seq") == 0;
        arg(&a, "%s", *e);
    }
    if (!has_q) {
        arg(&a, "--q"), arg(&a, "%s", in_dir(d, "q.npy"));
        arg(&a, "--k"), arg(&a, "%s", in_dir(d, "k.npy"));
        arg(&a, "--v"), arg(&a, "%s", in_dir(d, "v.npy"));
    }
    arg(&a, "--out"), arg(&a, "%s", in_dir(d, "o.npy"));
    arg(&a, "--lse"), arg(&a, "%s", in_dir(d, "lse.npy"));
    cli_result r = cli_argl(MPI_COMM_SELF, &a);
    expect_code(&r, code);
    expect_in(r.err, needle, "stderr");
    expect_in(r.err, "mattn run: ", "stderr");
    if (code == 2)
        expect_in(r.err, "mattn run --help", "stderr");
    if (exists(in_dir(d, "o.npy")) || exists(in_dir(d, "lse.npy")) || dir_count(d, ".tmp."))
        fail_msg("an output file exists after the error \"%s\"", r.err);
    cli_free(&r);
    argl_free(&a);
}
#define RUN_ERROR(d, code, needle, ...) \
    expect_run_error(d, code, needle, (const char *const[]){__VA_ARGS__, NULL})

static void test_usage_errors(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    write_valid(&d);
    RUN_ERROR(&d, 2, "unknown option --cuasal (did you mean --causal?)", "--cuasal");
    RUN_ERROR(&d, 2, "unknown option --nonsense", "--nonsense");
    RUN_ERROR(&d, 2, "unexpected argument 'extra'", "extra");
    RUN_ERROR(&d, 2, "--op: 'rng' is not one of vanilla|sdpa|flash|splash|ring", "--op", "rng");
    RUN_ERROR(&d, 2, "--layout: 'bsnd' is not one of bthd|bhtd", "--layout=bsnd");
    RUN_ERROR(&d, 2, "--chunk needs a value", "--chunk");
    RUN_ERROR(&d, 2, "--chunk needs a value", "--chunk=");
    RUN_ERROR(&d, 2, "--chunk needs a value (C) but is followed by --causal", "--chunk", "--causal");
    RUN_ERROR(&d, 2, "--chunk: 'x' is not an integer", "--chunk", "x");
    RUN_ERROR(&d, 2, "--chunk: '8k' is not an integer", "--chunk", "8k");
    RUN_ERROR(&d, 2, "--chunk: -1 is outside [0, ", "--chunk", "-1");
    RUN_ERROR(&d, 2, "--q-offset: '99999999999999999999' is not an integer", "--q-offset",
              "99999999999999999999");
    RUN_ERROR(&d, 2, "--q-offset: 2305843009213693952 is outside", "--q-offset",
              "2305843009213693952");
    RUN_ERROR(&d, 2, "--window: -2 is outside [-1, ", "--window", "-2,0");
    RUN_ERROR(&d, 2, "--window: expected two integers 'L,R', got '5'", "--window", "5");
    RUN_ERROR(&d, 2, "--window: expected two integers 'L,R', got '5,'", "--window", "5,");
    RUN_ERROR(&d, 2, "--window: expected two integers", "--window", "a,b");
    RUN_ERROR(&d, 2, "--dropout: 1 is outside [0, 1)", "--dropout", "1");
    RUN_ERROR(&d, 2, "--dropout: -0.1 is outside [0, 1)", "--dropout", "-0.1");
    RUN_ERROR(&d, 2, "--dropout: 'nan' is not a finite number", "--dropout", "nan");
    RUN_ERROR(&d, 2, "rounds to 1 in float32", "--dropout", "0.99999999999");
    RUN_ERROR(&d, 2, "--scale: 'nan' is not a finite number", "--scale", "nan");
    RUN_ERROR(&d, 2, "--scale: 'inf' is not a finite number", "--scale", "inf");
    RUN_ERROR(&d, 2, "--scale: must not be 0", "--scale", "0");
    RUN_ERROR(&d, 2, "--scale: 1e-50 rounds to 0 in float32", "--scale", "1e-50");
    RUN_ERROR(&d, 2, "--scale: 1e+39 is outside", "--scale", "1e39");
    RUN_ERROR(&d, 2, "--scale: '0.5x' is not a number", "--scale", "0.5x");
    RUN_ERROR(&d, 2, "--softcap: -1 is outside [0, ", "--softcap", "-1");
    RUN_ERROR(&d, 2, "--threads: -1 is outside [0, 4096]", "--threads", "-1");
    RUN_ERROR(&d, 2, "--block-q: 65537 is outside [0, 65536]", "--block-q", "65537");
    RUN_ERROR(&d, 2, "--seed: '-1' is not an integer", "--seed", "-1");
    RUN_ERROR(&d, 2, "--causal takes no value", "--causal=1");
    RUN_ERROR(&d, 2, "--causal is given more than once", "--causal", "--causal");
    RUN_ERROR(&d, 2, "--q-segments and --kv-segments go together", "--q-segments",
              in_dir(&d, "q.npy"));
    RUN_ERROR(&d, 2, "--weights needs --op vanilla", "--op", "flash", "--weights",
              in_dir(&d, "w.npy"));
    RUN_ERROR(&d, 2, "--block-q/--block-kv tune flash", "--op", "vanilla", "--block-kv", "64");
    RUN_ERROR(&d, 2, "--check-rows needs --check", "--check-rows", "5");
    RUN_ERROR(&d, 2, "--mask-kind dense needs --mask", "--op", "splash", "--mask-kind", "dense");
    RUN_ERROR(&d, 2, "--mask-kind local needs --window", "--op", "splash", "--mask-kind", "local");
    RUN_ERROR(&d, 2, "--mask-kind chunked needs --chunk", "--op", "splash", "--mask-kind",
              "chunked");
    RUN_ERROR(&d, 2, "--mask-kind full allows every key", "--op", "splash", "--mask-kind", "full",
              "--causal");
    RUN_ERROR(&d, 2, "--mask-kind describes splash's mask object", "--op", "flash",
              "--mask-kind", "causal");
    RUN_ERROR(&d, 2, "--mask-kind: 'diag' is not one of", "--op", "splash", "--mask-kind",
              "diag");
    RUN_ERROR(&d, 2, "--mesh: expected three integers >= 1 'DP,TP,SP', got '1,1'", "--mesh",
              "1,1");
    RUN_ERROR(&d, 2, "--mesh 1,2,1 has 2 ranks but the job has 1", "--mesh", "1,2,1");
    RUN_ERROR(&d, 2, "--comm chooses the ring's transport", "--comm", "sendrecv");
    RUN_ERROR(&d, 2, "--batch describes a synthetic problem", "--batch", "2");
    RUN_ERROR(&d, 2, "--q, --k and --v go together", "--q", in_dir(&d, "q.npy"), "--quiet");
    RUN_ERROR(&d, 2, "--heads 6 is not a multiple of --kv-heads 4", "--seq", "8", "--heads", "6",
              "--kv-heads", "4");
    RUN_ERROR(&d, 2, "is given for two outputs", "--weights", in_dir(&d, "o.npy"), "--op",
              "vanilla");

    /* The top level. */
    cli_result r = CLI("frobnicate");
    expect_code(&r, 2);
    expect_in(r.err, "unknown command 'frobnicate'", "stderr");
    cli_free(&r);
    r = CLI("--frob");
    expect_code(&r, 2);
    expect_in(r.err, "unknown option --frob", "stderr");
    cli_free(&r);
    r = cli_list(MPI_COMM_SELF, (const char *const[]){NULL});
    expect_code(&r, 2);
    expect_in(r.err, "usage: mattn", "stderr");
    cli_free(&r);
    r = CLI("help", "nothing");
    expect_code(&r, 2);
    cli_free(&r);
    dir_free(&d);
}

static void test_runtime_errors(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    write_valid(&d); /* q [1,6,4,8], k/v [1,7,2,8] */
    const char *bad = in_dir(&d, "bad.npy");
    FILE *f = fopen(bad, "wb");
    fputs("this is not an npy file", f);
    fclose(f);
    const int64_t s1[1] = {3}, s2[2] = {1, 6}, s3[3] = {1, 6, 7}, s4[4] = {1, 6, 4, 8};
    float z[4 * 6 * 7 * 2] = {0};
    int32_t ids[16] = {0};
    write_f32(in_dir(&d, "q3d.npy"), 3, s3, z);
    int32_t *qi = tl_alloc(sizeof(int32_t) * 192);
    assert_int_equal(mattn__npy_write(in_dir(&d, "qint.npy"), MATTN__NPY_I32, 4, s4, qi), MATTN_OK);
    free(qi);
    const int64_t kb2[4] = {2, 7, 2, 8}, kd[4] = {1, 7, 2, 16}, vs[4] = {1, 9, 2, 8},
                  vh[4] = {1, 7, 1, 8}, k5[4] = {1, 7, 3, 8}, k0[4] = {1, 7, 0, 8};
    float *big = tl_alloc(sizeof(float) * 2 * 7 * 2 * 16);
    write_f32(in_dir(&d, "kb2.npy"), 4, kb2, big);
    write_f32(in_dir(&d, "kd.npy"), 4, kd, big);
    write_f32(in_dir(&d, "vs.npy"), 4, vs, big);
    write_f32(in_dir(&d, "vh.npy"), 4, vh, big);
    write_f32(in_dir(&d, "k5.npy"), 4, k5, big);
    write_f32(in_dir(&d, "k0.npy"), 4, k0, big);
    write_f32(in_dir(&d, "sinks3.npy"), 1, s1, z);
    float nan_sinks[4] = {0, NAN, 0, 0};
    const int64_t s4h[1] = {4};
    write_f32(in_dir(&d, "sinksnan.npy"), 1, s4h, nan_sinks);
    write_f32(in_dir(&d, "mask_f.npy"), 2, (const int64_t[]){6, 7}, z);
    uint8_t m[2 * 4 * 6 * 7] = {0};
    assert_int_equal(mattn__npy_write(in_dir(&d, "mask_ts.npy"), MATTN__NPY_U8, 2,
                                      (const int64_t[]){7, 6}, m), MATTN_OK);
    assert_int_equal(mattn__npy_write(in_dir(&d, "mask_b.npy"), MATTN__NPY_U8, 4,
                                      (const int64_t[]){2, 1, 6, 7}, m), MATTN_OK);
    assert_int_equal(mattn__npy_write(in_dir(&d, "mask_h.npy"), MATTN__NPY_U8, 3,
                                      (const int64_t[]){3, 6, 7}, m), MATTN_OK);
    assert_int_equal(mattn__npy_write(in_dir(&d, "mask_1d.npy"), MATTN__NPY_U8, 1,
                                      (const int64_t[]){42}, m), MATTN_OK);
    write_f32(in_dir(&d, "bias_h.npy"), 4, (const int64_t[]){1, 2, 6, 7}, z);
    assert_int_equal(mattn__npy_write(in_dir(&d, "seg_q.npy"), MATTN__NPY_I32, 2, s2, ids),
                     MATTN_OK);
    assert_int_equal(mattn__npy_write(in_dir(&d, "seg_bad.npy"), MATTN__NPY_I32, 2,
                                      (const int64_t[]){1, 5}, ids), MATTN_OK);
    int64_t seg64[7] = {0, 0, 0, 0, 0, 0, (int64_t)1 << 40};
    write_npy_typed(in_dir(&d, "seg64.npy"), "<i8", 2, (const int64_t[]){1, 7}, seg64, 8);

    char k[160];
    snprintf(k, sizeof k, "%s", in_dir(&d, "k.npy"));
    RUN_ERROR(&d, 1, "MATTN_ERR_IO: /", "--q", in_dir(&d, "nope.npy"), "--k", k, "--v",
              in_dir(&d, "v.npy"));
    RUN_ERROR(&d, 1, "nope.npy: cannot open: No such file", "--q", in_dir(&d, "nope.npy"), "--k",
              k, "--v", in_dir(&d, "v.npy"));
    RUN_ERROR(&d, 1, "bad.npy: bad magic", "--q", bad, "--k", k, "--v", in_dir(&d, "v.npy"));
    RUN_ERROR(&d, 1, "MATTN_ERR_IO: ", "--mask", bad);
    RUN_ERROR(&d, 1, "qint.npy: q has dtype '<i4' but must be float32 or float64", "--q",
              in_dir(&d, "qint.npy"), "--k", k, "--v", in_dir(&d, "v.npy"));
    RUN_ERROR(&d, 1, "q3d.npy: q has shape [1, 6, 7] but must be 4-d [B, T, Hq, D] (--layout bthd)",
              "--q", in_dir(&d, "q3d.npy"), "--k", k, "--v", in_dir(&d, "v.npy"));
    RUN_ERROR(&d, 1, "must be 4-d [B, Hq, T, D] (--layout bhtd)", "--layout", "bhtd", "--q",
              in_dir(&d, "q3d.npy"), "--k", k, "--v", in_dir(&d, "v.npy"));
    RUN_ERROR(&d, 1, "MATTN_ERR_SHAPE: batch sizes differ", "--q", in_dir(&d, "q.npy"), "--k",
              in_dir(&d, "kb2.npy"), "--v", in_dir(&d, "v.npy"));
    RUN_ERROR(&d, 1, "head_dim 8 but", "--q", in_dir(&d, "q.npy"), "--k", in_dir(&d, "kd.npy"),
              "--v", in_dir(&d, "v.npy"));
    RUN_ERROR(&d, 1, "has 7 keys but", "--q", in_dir(&d, "q.npy"), "--k", k, "--v",
              in_dir(&d, "vs.npy"));
    RUN_ERROR(&d, 1, "has 2 heads but", "--q", in_dir(&d, "q.npy"), "--k", k, "--v",
              in_dir(&d, "vh.npy"));
    RUN_ERROR(&d, 1, "q_heads=4 (", "--q", in_dir(&d, "q.npy"), "--k", in_dir(&d, "k5.npy"),
              "--v", in_dir(&d, "k5.npy"));
    RUN_ERROR(&d, 1, "heads and head_dim must be >= 1", "--q", in_dir(&d, "q.npy"), "--k",
              in_dir(&d, "k0.npy"), "--v", in_dir(&d, "k0.npy"));
    RUN_ERROR(&d, 1, "sinks have shape [3] but must be [Hq] = [4]", "--sinks",
              in_dir(&d, "sinks3.npy"));
    RUN_ERROR(&d, 1, "MATTN_ERR_ARG: sinks[1]=nan", "--sinks", in_dir(&d, "sinksnan.npy"));
    RUN_ERROR(&d, 1, "mask has dtype '<f4' but must be bool or uint8", "--mask",
              in_dir(&d, "mask_f.npy"));
    RUN_ERROR(&d, 1, "mask has shape [7, 6], which does not broadcast to [B, Hq, T, S] = [1, 4, 6, 7]",
              "--mask", in_dir(&d, "mask_ts.npy"));
    RUN_ERROR(&d, 1, "mask has shape [2, 1, 6, 7], which does not broadcast", "--mask",
              in_dir(&d, "mask_b.npy"));
    RUN_ERROR(&d, 1, "mask has shape [3, 6, 7], which does not broadcast", "--mask",
              in_dir(&d, "mask_h.npy"));
    RUN_ERROR(&d, 1, "mask has shape [42], which does not broadcast", "--mask",
              in_dir(&d, "mask_1d.npy"));
    RUN_ERROR(&d, 1, "bias has shape [1, 2, 6, 7], which does not broadcast", "--bias",
              in_dir(&d, "bias_h.npy"));
    RUN_ERROR(&d, 1, "bias has dtype '|u1' but must be float32 or float64", "--bias",
              in_dir(&d, "mask_b.npy"));
    RUN_ERROR(&d, 1, "kv segment ids have shape [1, 5] but must be [B, S] = [1, 7]",
              "--q-segments", in_dir(&d, "seg_q.npy"), "--kv-segments", in_dir(&d, "seg_bad.npy"));
    RUN_ERROR(&d, 1, "q segment ids have shape [1, 5] but must be [B, T] = [1, 6]",
              "--q-segments", in_dir(&d, "seg_bad.npy"), "--kv-segments", in_dir(&d, "seg_q.npy"));
    RUN_ERROR(&d, 1, "element 6 = 1099511627776 does not fit in int32", "--q-segments",
              in_dir(&d, "seg_q.npy"), "--kv-segments", in_dir(&d, "seg64.npy"));
    RUN_ERROR(&d, 1, "q segment ids has dtype '<f4'", "--q-segments", in_dir(&d, "q.npy"),
              "--kv-segments", in_dir(&d, "seg_q.npy"));
    /* Synthetic mode validates extra inputs against its sizes too. */
    RUN_ERROR(&d, 1, "sinks have shape [3] but must be [Hq] = [2]", "--seq", "8", "--heads", "2",
              "--dim", "4", "--sinks", in_dir(&d, "sinks3.npy"), "--quiet");

    /* An output in a directory that does not exist: the error comes before
     * any computing, and nothing is created anywhere. */
    argl a = {.n = 0};
    arg(&a, "run"), arg(&a, "--q"), arg(&a, "%s", in_dir(&d, "q.npy"));
    arg(&a, "--k"), arg(&a, "%s", k), arg(&a, "--v"), arg(&a, "%s", in_dir(&d, "v.npy"));
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    arg(&a, "--lse"), arg(&a, "%s", in_dir(&d, "nodir/lse.npy"));
    cli_result r = cli_argl(MPI_COMM_SELF, &a);
    expect_code(&r, 1);
    expect_in(r.err, "nodir/lse.npy: cannot create the file", "stderr");
    assert_false(exists(in_dir(&d, "o.npy")));
    assert_int_equal(dir_count(&d, ".tmp."), 0);
    assert_null(strstr(r.out, "time_best_s")); /* nothing was computed */
    cli_free(&r);
    argl_free(&a);

    /* The last rename fails (--lse names a directory) after --out was
     * already renamed into place: --out is removed again. */
    assert_int_equal(mkdir(in_dir(&d, "lsedir"), 0755), 0);
    a.n = 0;
    arg(&a, "run"), arg(&a, "--q"), arg(&a, "%s", in_dir(&d, "q.npy"));
    arg(&a, "--k"), arg(&a, "%s", k), arg(&a, "--v"), arg(&a, "%s", in_dir(&d, "v.npy"));
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    arg(&a, "--lse"), arg(&a, "%s", in_dir(&d, "lsedir"));
    r = cli_argl(MPI_COMM_SELF, &a);
    expect_code(&r, 1);
    expect_in(r.err, "lsedir: cannot rename", "stderr");
    assert_false(exists(in_dir(&d, "o.npy")));
    assert_int_equal(dir_count(&d, ".tmp."), 0);
    cli_free(&r);
    argl_free(&a);
    free(big);
    dir_free(&d);
}

/* ------------------------------------------------------------------ huge sizes */

/* `mattn <args>` on one rank: exit 1 with `needle` in stderr. */
static void expect_error(const char *needle, const char *const *args)
{
    cli_result r = cli_list(MPI_COMM_SELF, args);
    expect_code(&r, 1);
    expect_in(r.err, needle, "stderr");
    cli_free(&r);
}
#define EXPECT_ERROR(needle, ...) expect_error(needle, (const char *const[]){__VA_ARGS__, NULL})

/* Sizes whose buffers cannot be addressed (the product overflows int64 or
 * size_t): exit 1 naming the buffer, never a crash, and nothing allocated
 * first (the sizes are checked before any buffer is). */
static void test_huge_sizes(void **state)
{
    (void)state;
#define HUGE_PROBLEM "--batch", "1048576", "--seq", "2147483648", "--heads", "256", "--dim", "64", \
                     "--quiet"
    /* On a mesh (--mesh, or --op ring without one) each rank allocates its
     * shard; without one the synthetic problem is made whole. */
    const char *local_q = "MATTN_ERR_NOMEM: the local q [1048576, 2147483648, 256, 64] is too large";
    EXPECT_ERROR(local_q, "run", "--op", "flash", "--mesh", "1,1,1", HUGE_PROBLEM);
    EXPECT_ERROR(local_q, "run", "--op", "ring", HUGE_PROBLEM);
    EXPECT_ERROR(local_q, "grad", "--op", "flash", "--mesh", "1,1,1", HUGE_PROBLEM);
    EXPECT_ERROR(local_q, "grad", "--op", "ring", "--seq-layout", "zigzag", HUGE_PROBLEM);
    const char *global_q = "the synthetic q [1048576, 2147483648, 256, 64] is too large";
    EXPECT_ERROR(global_q, "run", "--op", "vanilla", HUGE_PROBLEM);
    EXPECT_ERROR(global_q, "grad", "--op", "flash", HUGE_PROBLEM);
#undef HUGE_PROBLEM

    /* Files: an empty v (S = 0) may declare any Dv, so o [B, T, Hq, Dv]
     * overflows though every file is small. */
    tmpdir d = dir_make();
    float *zero = tl_alloc(sizeof(float) * 16384);
    char q[160], k[160], v[160];
    snprintf(q, sizeof q, "%s", in_dir(&d, "q.npy"));
    snprintf(k, sizeof k, "%s", in_dir(&d, "k.npy"));
    snprintf(v, sizeof v, "%s", in_dir(&d, "v.npy"));
    write_f32(q, 4, (const int64_t[]){1, 16384, 1, 1}, zero);
    write_f32(k, 4, (const int64_t[]){1, 0, 1, 1}, zero);
    write_f32(v, 4, (const int64_t[]){1, 0, 1, (int64_t)1 << 50}, zero);
    EXPECT_ERROR("MATTN_ERR_NOMEM: the output o [1, 16384, 1, 1125899906842624] is too large",
                 "run", "--op", "flash", "--q", q, "--k", k, "--v", v, "--lse",
                 in_dir(&d, "lse.npy"));
    assert_int_equal(dir_count(&d, NULL), 3); /* no output, no temporary */
    /* A header whose nonzero dims overflow is refused even with a 0 dim
     * (NumPy cannot make such an array): otherwise B * Hq of this q [B, Hq,
     * T, D] (bhtd) would overflow wherever the command multiplies them. */
    write_npy_typed(q, "<f4", 4, (const int64_t[]){(int64_t)1 << 62, 4, 0, 1}, zero, 4);
    write_npy_typed(k, "<f4", 4, (const int64_t[]){(int64_t)1 << 62, 1, 0, 1}, zero, 4);
    EXPECT_ERROR("q.npy: shape [4611686018427387904, 4, 0, 1] is too large", "run", "--layout",
                 "bhtd", "--q", q, "--k", k, "--v", k);
    free(zero);
    dir_free(&d);

    /* decode: every size is checked before q is made and filled (here 2^54
     * bytes), so the cache that cannot exist is named at once. */
    const char *key_cache =
        "MATTN_ERR_NOMEM: the key cache [1048576, 2147483647, 65536, 65536] is too large";
    const char *const cache[] = {"ragged", "ar"};
    for (int x = 0; x < 2; x++)
        EXPECT_ERROR(key_cache, "decode", "--op", cache[x], "--batch", "1048576", "--kv-len",
                     "2147483647", "--heads", "65536", "--kv-heads", "65536", "--dim", "65536",
                     "--quiet");
    EXPECT_ERROR("MATTN_ERR_NOMEM: the value cache [2097152, 1048576, 16, 65536] is too large",
                 "decode", "--op", "paged", "--batch", "1024", "--kv-len", "2147483647",
                 "--page-size", "1048576", "--heads", "16", "--kv-heads", "16", "--dim", "1",
                 "--dv", "65536", "--quiet");
    /* page ids are int32: a pool of 2^31 pages cannot be named */
    EXPECT_ERROR("MATTN_ERR_SHAPE: the synthetic page pool would need 1048576 x 2048 pages, more "
                 "than int32 page ids can name",
                 "decode", "--op", "paged", "--batch", "1048576", "--kv-len", "2147483647",
                 "--page-size", "1048576", "--heads", "1", "--kv-heads", "1", "--dim", "1",
                 "--quiet");
}

/* ------------------------------------------------------------------ synthetic */

static void test_synthetic_report(void **state)
{
    (void)state;
    tmpdir d = dir_make();
    /* Causal + window + chunk + offsets: allowed_pairs must be the exact
     * count of the SPEC predicates, and flop 2 (D + Dv) per pair. */
    argl a = {.n = 0};
    arg(&a, "run"), arg(&a, "--op"), arg(&a, "flash");
    const char *opts[] = {"--batch", "2", "--seq", "75", "--kv-seq", "90", "--heads", "4",
                          "--kv-heads", "2", "--dim", "16", "--dv", "8", "--causal",
                          "--window", "20,3", "--chunk", "32", "--q-offset", "10",
                          "--kv-offset", "-4", "--softcap", "5", "--dropout", "0.25",
                          "--seed", "99", "--repeat", "2", "--check", "--out"};
    for (size_t x = 0; x < sizeof opts / sizeof *opts; x++)
        arg(&a, "%s", opts[x]);
    arg(&a, "%s", in_dir(&d, "o.npy"));
    cli_result r = cli_argl(MPI_COMM_SELF, &a);
    expect_code(&r, 0);
    expect_in(r.out, "inputs: synthetic\n", "report");
    expect_in(r.out, "kernel: flash\n", "report");
    expect_in(r.out, "check: pass\n", "report");
    expect_in(r.err, "mattn run: run 2/2: ", "progress");
    expect_in(r.err, "mattn run: warm-up 1/1: ", "progress");
    expect_in(r.err, "mattn run: check: 600/600 rows (100%)", "progress");

    tc_problem p = make(1, 2, 75, 90, 4, 2, 16, 8);
    p.causal = 1, p.window_left = 20, p.window_right = 3, p.chunk = 32;
    p.q_offset = 10, p.kv_offset = -4;
    double pairs = 0;
    for (int64_t b = 0; b < 2; b++)
        for (int64_t h = 0; h < 4; h++)
            for (int64_t i = 0; i < 75; i++)
                for (int64_t j = 0; j < 90; j++)
                    pairs += tc_allowed(&p, b, h, i, j);
    assert_true(pairs > 0);
    assert_true(report_value(r.out, "allowed_pairs") == pairs);
    assert_true(report_value(r.out, "flop") == 2.0 * (16 + 8) * pairs);
    assert_true(report_value(r.out, "batch") == 2 && report_value(r.out, "kv_seq") == 90);
    assert_true(report_value(r.out, "heads") == 4 && report_value(r.out, "kv_heads") == 2);
    assert_true(report_value(r.out, "dim") == 16 && report_value(r.out, "dv") == 8);
    assert_true(report_value(r.out, "repeat") == 2 && report_value(r.out, "warmup") == 1);
    assert_true(report_value(r.out, "check_rows") == 2 * 4 * 75);
    double best = report_value(r.out, "time_best_s"), med = report_value(r.out, "time_median_s");
    assert_true(best > 0 && best <= med);
    double ratio = report_value(r.out, "max_err_over_bound");
    double eo = report_value(r.out, "max_abs_err_o"), el = report_value(r.out, "max_abs_err_lse");
    assert_true(ratio > 0 && ratio <= 1.0);
    assert_true(eo > 0 && eo < 1e-5 && el > 0 && el < 1e-5);
    assert_true(report_value(r.out, "scale") == (double)(float)(1.0 / sqrt(16.0)));
    /* --out in synthetic mode: [B, T, Hq, Dv] */
    free(read_output(in_dir(&d, "o.npy"), 4, (const int64_t[]){2, 75, 4, 8}));
    cli_free(&r);
    argl_free(&a);

    /* Without causal, the chunk's end and the window's right side bound
     * the keys too. */
    r = CLI("run", "--op", "vanilla", "--seq", "40", "--kv-seq", "50", "--heads", "1", "--dim",
            "4", "--chunk", "7", "--window", "10,2", "--q-offset", "3", "--quiet", "--repeat",
            "1", "--check");
    expect_code(&r, 0);
    p.B = 1, p.Hq = p.Hkv = 1, p.T = 40, p.S = 50;
    p.causal = 0, p.chunk = 7, p.window_left = 10, p.window_right = 2;
    p.q_offset = 3, p.kv_offset = 0;
    pairs = 0;
    for (int64_t i = 0; i < 40; i++)
        for (int64_t j = 0; j < 50; j++)
            pairs += tc_allowed(&p, 0, 0, i, j);
    assert_true(report_value(r.out, "allowed_pairs") == pairs);
    cli_free(&r);

    /* sdpa names the kernel it chose; --check-rows samples; --quiet. */
    r = CLI("run", "--seq", "64", "--heads", "2", "--dim", "8", "--check", "--check-rows", "7",
            "--quiet", "--repeat", "1", "--warmup", "0", "--layout", "bhtd", "--threads", "2");
    expect_code(&r, 0);
    expect_in(r.out, "op: sdpa\n", "report");
    assert_true(strstr(r.out, "kernel: vanilla\n") || strstr(r.out, "kernel: flash\n") ||
                strstr(r.out, "kernel: splash\n"));
    assert_true(report_value(r.out, "check_rows") == 7);
    assert_true(report_value(r.out, "threads") == 2);
    assert_true(report_value(r.out, "allowed_pairs") == 2.0 * 64 * 64);
    assert_string_equal(r.err, "");
    cli_free(&r);
    tc_free(&p);
    dir_free(&d);
}

/* ------------------------------------------------------------------ the --check reference */

/* The command's reference agrees with testlib's (the CLI reports the same
 * max error the test measures), and it fails a wrong result. */
static void test_check_reference(void **state)
{
    (void)state;
    tl_rng rng = tl_rng_make(30);
    tc_problem p = tc_make(&rng, 2, 40, 50, 4, 2, 16, 12, 1.0);
    p.causal = 1, p.q_offset = 5, p.softcap = 6.0, p.dropout_p = 0.2f, p.seed = 5;
    add_bias(&p, &rng, 1, 4);
    add_mask(&p, &rng, 2, 4); /* per batch and head; the bias broadcasts over batch */
    p.sinks = tl_alloc(sizeof(float) * 4);
    tl_fill(&rng, p.sinks, 4, 1.0);
    tmpdir d = dir_make();
    argl a = {.n = 0};
    arg(&a, "run"), arg(&a, "--op"), arg(&a, "vanilla"), arg(&a, "--check");
    file_style st = {0};
    write_problem(&d, &p, &st, &a);
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    arg(&a, "--lse"), arg(&a, "%s", in_dir(&d, "lse.npy"));
    cli_result r = cli_argl(MPI_COMM_SELF, &a);
    expect_code(&r, 0);
    expect_in(r.out, "check: pass\n", "report");
    float *o = read_output(in_dir(&d, "o.npy"), 4, (const int64_t[]){2, 40, 4, 12});
    float *lse = read_output(in_dir(&d, "lse.npy"), 3, (const int64_t[]){2, 4, 40});
    size_t rows = 2 * 40 * 4;
    double *ro = tl_alloc(sizeof(double) * rows * 12), *rl = tl_alloc(sizeof(double) * rows);
    tc_reference(&p, ro, rl, NULL, NULL, NULL, NULL);
    double eo = 0, el = 0;
    for (size_t x = 0; x < rows * 12; x++)
        eo = fmax(eo, fabs((double)o[x] - ro[x]));
    for (size_t x = 0; x < rows; x++)
        if (isfinite(rl[x]))
            el = fmax(el, fabs((double)lse[x] - rl[x]));
    tl_assert_close(report_value(r.out, "max_abs_err_o"), eo, 1e-6 * eo + 1e-15, "CLI max_abs_err_o");
    tl_assert_close(report_value(r.out, "max_abs_err_lse"), el, 1e-6 * el + 1e-15, "CLI max_abs_err_lse");
    cli_free(&r);
    argl_free(&a);

    /* Straight into the reference: a correct result passes, one wrong
     * element (1e-4 off), a NaN, or a finite lse for a masked row fail,
     * and the worst row is found. */
    mattn_options opt = tc_options(&p);
    mattn_tensor q = mattn_tensor_bthd(p.q, 2, 40, 4, 16), k = mattn_tensor_bthd(p.k, 2, 50, 2, 16),
                 v = mattn_tensor_bthd(p.v, 2, 50, 2, 12), to = mattn_tensor_bthd(o, 2, 40, 4, 12);
    mattn__ref_problem rp = {&q, &k, &v, &to, lse, NULL, &opt};
    mattn__ref_report rep;
    assert_int_equal(mattn__ref_check(&rp, 0, 2, NULL, NULL, &rep), MATTN_OK);
    assert_int_equal(rep.rows, 320);
    assert_true(rep.max_ratio <= 1.0);
    int64_t b = 1, t = 17, h = 2; /* row (b, h, t) = flat (b * Hq + h) * T + t */
    float saved = o[((b * 40 + t) * 4 + h) * 12 + 3];
    o[((b * 40 + t) * 4 + h) * 12 + 3] = saved + 1e-4f;
    assert_int_equal(mattn__ref_check(&rp, 0, 1, NULL, NULL, &rep), MATTN_OK);
    assert_true(rep.max_ratio > 1.0);
    assert_int_equal(rep.worst_row, (b * 4 + h) * 40 + t);
    tl_assert_close(rep.max_err_o, 1e-4, 2e-6, "perturbation seen as the max error");
    o[((b * 40 + t) * 4 + h) * 12 + 3] = NAN;
    assert_int_equal(mattn__ref_check(&rp, 0, 2, NULL, NULL, &rep), MATTN_OK);
    assert_true(isinf(rep.max_ratio));
    o[((b * 40 + t) * 4 + h) * 12 + 3] = saved;
    float ls = lse[5];
    lse[5] += 1e-3f;
    assert_int_equal(mattn__ref_check(&rp, 0, 2, NULL, NULL, &rep), MATTN_OK);
    assert_true(rep.max_ratio > 1.0);
    assert_int_equal(rep.worst_row, 5);
    lse[5] = ls;
    /* A sampled check sees rows 0, 40, 80, ... (rows = 8 of 320). */
    lse[40] += 0.01f;
    assert_int_equal(mattn__ref_check(&rp, 8, 2, NULL, NULL, &rep), MATTN_OK);
    assert_int_equal(rep.rows, 8);
    assert_true(rep.max_ratio > 1.0);
    assert_int_equal(rep.worst_row, 40);
    lse[40] -= 0.01f;
    free(o), free(lse), free(ro), free(rl);
    tc_free(&p);
    dir_free(&d);

    /* Fully masked rows (no sink) must be exactly o = 0, lse = -inf. */
    rng = tl_rng_make(31);
    p = tc_make(&rng, 1, 12, 12, 2, 1, 8, 8, 1.0);
    p.causal = 1, p.q_offset = -3; /* rows 0..2 see nothing */
    opt = tc_options(&p);
    float *o2 = tl_alloc(sizeof(float) * 12 * 2 * 8), *l2 = tl_alloc(sizeof(float) * 2 * 12);
    q = mattn_tensor_bthd(p.q, 1, 12, 2, 8), k = mattn_tensor_bthd(p.k, 1, 12, 1, 8);
    v = mattn_tensor_bthd(p.v, 1, 12, 1, 8), to = mattn_tensor_bthd(o2, 1, 12, 2, 8);
    assert_int_equal(mattn_flash_forward(&q, &k, &v, &to, l2, &opt), MATTN_OK);
    mattn__ref_problem rp2 = {&q, &k, &v, &to, l2, NULL, &opt};
    assert_int_equal(mattn__ref_check(&rp2, 0, 1, NULL, NULL, &rep), MATTN_OK);
    assert_true(rep.max_ratio <= 1.0);
    l2[12 + 1] = -80.0f; /* head 1, row 1: finite instead of -inf */
    assert_int_equal(mattn__ref_check(&rp2, 0, 1, NULL, NULL, &rep), MATTN_OK);
    assert_true(isinf(rep.max_ratio));
    assert_int_equal(rep.worst_row, 12 + 1);
    l2[12 + 1] = -INFINITY;
    o2[(2 * 2 + 0) * 8 + 5] = 1e-30f; /* row 2, head 0: must be exactly 0 */
    assert_int_equal(mattn__ref_check(&rp2, 0, 1, NULL, NULL, &rep), MATTN_OK);
    assert_true(isinf(rep.max_ratio));
    assert_int_equal(rep.worst_row, 2);
    free(o2), free(l2);
    tc_free(&p);
}

/* ------------------------------------------------------------------ MPI */

/* Collective: every rank calls the command on MPI_COMM_WORLD with paths in
 * its own directory; only rank 0 reads and writes, and every rank returns
 * rank 0's status. */
static void test_world_agreement(void **state)
{
    (void)state;
    int rank = tl_rank();
    tmpdir d = dir_make();
    write_valid(&d);
    argl a = {.n = 0};
    arg(&a, "run"), arg(&a, "--op"), arg(&a, "flash");
    arg(&a, "--q"), arg(&a, "%s", in_dir(&d, "q.npy"));
    arg(&a, "--k"), arg(&a, "%s", in_dir(&d, "k.npy"));
    arg(&a, "--v"), arg(&a, "%s", in_dir(&d, "v.npy"));
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    cli_result r = cli_argl(MPI_COMM_WORLD, &a);
    expect_code(&r, 0);
    assert_int_equal(exists(in_dir(&d, "o.npy")), rank == 0);
    if (rank == 0) {
        char want[32];
        snprintf(want, sizeof want, "ranks: %d\n", tl_size());
        expect_in(r.out, want, "report");
    } else {
        assert_string_equal(r.out, ""); /* only rank 0 prints */
    }
    cli_free(&r);
    remove(in_dir(&d, "o.npy"));

    /* Only rank 0 sees a bad q file: every rank fails with exit 1. */
    FILE *f = fopen(in_dir(&d, "q.npy"), "r+b");
    if (rank == 0)
        fputs("garbage", f);
    fclose(f);
    r = cli_argl(MPI_COMM_WORLD, &a);
    expect_code(&r, 1);
    if (rank == 0)
        expect_in(r.err, "bad magic", "stderr");
    assert_false(exists(in_dir(&d, "o.npy")));
    cli_free(&r);

    /* The other way round: only the other ranks' files are missing, and
     * they never read them. */
    if (rank != 0)
        remove(in_dir(&d, "k.npy"));
    if (rank == 0)
        write_valid(&d);
    r = cli_argl(MPI_COMM_WORLD, &a);
    expect_code(&r, 0);
    cli_free(&r);

    /* A usage error seen only by the other ranks (a launcher that mangles
     * argv): every rank still agrees on exit 2, and nobody hangs. */
    argl b = {.n = 0};
    for (int x = 0; x < a.n; x++)
        arg(&b, "%s", a.v[x]);
    if (rank != 0)
        arg(&b, "--bogus");
    r = cli_argl(MPI_COMM_WORLD, &b);
    expect_code(&r, tl_size() > 1 ? 2 : 0);
    cli_free(&r);
    argl_free(&b);

    /* Usage errors and help agree too. */
    arg(&a, "--bogus");
    r = cli_argl(MPI_COMM_WORLD, &a);
    expect_code(&r, 2);
    if (rank != 0)
        assert_string_equal(r.err, "");
    cli_free(&r);
    r = cli_list(MPI_COMM_WORLD, (const char *const[]){"run", "--help", NULL});
    expect_code(&r, 0);
    assert_int_equal(r.out[0] != '\0', rank == 0);
    cli_free(&r);
    argl_free(&a);
    dir_free(&d);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const struct CMUnitTest spread[] = {
        cmocka_unit_test(test_run_basic),
        cmocka_unit_test(test_run_gqa_bhtd),
        cmocka_unit_test(test_run_structure),
        cmocka_unit_test(test_run_segments_mask),
        cmocka_unit_test(test_run_logits),
        cmocka_unit_test(test_run_dropout),
        cmocka_unit_test(test_run_sizes),
        cmocka_unit_test(test_run_splash),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_runtime_errors),
        cmocka_unit_test(test_huge_sizes),
        cmocka_unit_test(test_synthetic_report),
        cmocka_unit_test(test_check_reference),
    };
    const struct CMUnitTest all[] = {
        cmocka_unit_test(test_world_agreement),
    };
    int failed = tl_run_spread("cli", spread, sizeof spread / sizeof spread[0]);
    failed += tl_run_all("cli (MPI_COMM_WORLD)", all, sizeof all / sizeof all[0]);
    MPI_Finalize();
    return failed ? 1 : 0;
}
