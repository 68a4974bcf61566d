/* Helpers shared by the CLI test programs (test_cli.c, test_cli_dist.c,
 * test_cli_decode.c):
 * temporary directories, argument lists, running the command in-process
 * with captured output, writing problems as .npy files by hand and reading
 * outputs back. Every function is static: each program includes this once. */
#ifndef MATTN_TEST_CLI_COMMON_H
#define MATTN_TEST_CLI_COMMON_H

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
#include "common/testlib.h"

#pragma GCC diagnostic ignored "-Wunused-function"

/* ------------------------------------------------------------------ helpers */

typedef struct tmpdir {
    char path[64];
} tmpdir;

static tmpdir dir_make(void)
{
    tmpdir d;
    snprintf(d.path, sizeof d.path, "/tmp/mattn-cli-XXXXXX");
    if (mkdtemp(d.path) == NULL)
        fail_msg("mkdtemp: %s", strerror(errno));
    return d;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void dir_free(tmpdir *d)
{
    nftw(d->path, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* "<dir>/<name>" in one of 64 rotating buffers (enough for one statement). */
static const char *in_dir(const tmpdir *d, const char *name)
{
    static char buf[64][160];
    static int next;
    char *p = buf[next++ % 64];
    snprintf(p, 160, "%s/%s", d->path, name);
    return p;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Number of directory entries whose name contains `part` (NULL: all). */
static int dir_count(const tmpdir *d, const char *part)
{
    DIR *dir = opendir(d->path);
    assert_non_null(dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(dir));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            (part == NULL || strstr(e->d_name, part)))
            n++;
    closedir(dir);
    return n;
}

/* An argument list under construction. */
typedef struct argl {
    char *v[128];
    int n;
} argl;

static void arg(argl *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg(argl *a, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    assert_true(a->n < 127);
    a->v[a->n++] = strdup(buf);
}

static void argl_free(argl *a)
{
    for (int x = 0; x < a->n; x++)
        free(a->v[x]);
    a->n = 0;
}

typedef struct cli_result {
    int code;
    char *out, *err; /* what the command printed */
} cli_result;

/* Runs "mattn <args...>" in-process with captured output. */
static cli_result cli_argl(MPI_Comm comm, const argl *a)
{
    char *argv[130];
    argv[0] = (char *)"mattn";
    for (int x = 0; x < a->n; x++)
        argv[x + 1] = a->v[x];
    argv[a->n + 1] = NULL;
    cli_result r;
    size_t on, en;
    r.out = r.err = NULL;
    FILE *o = open_memstream(&r.out, &on), *e = open_memstream(&r.err, &en);
    assert_non_null(o);
    assert_non_null(e);
    mattn__cli_set_streams(o, e);
    r.code = mattn__cli_main(comm, a->n + 1, argv);
    mattn__cli_set_streams(NULL, NULL);
    fclose(o);
    fclose(e);
    return r;
}

static cli_result cli_list(MPI_Comm comm, const char *const *args)
{
    argl a = {.n = 0};
    for (; *args; args++)
        arg(&a, "%s", *args);
    cli_result r = cli_argl(comm, &a);
    argl_free(&a);
    return r;
}
#define CLI(...) cli_list(MPI_COMM_SELF, (const char *const[]){__VA_ARGS__, NULL})

static void cli_free(cli_result *r)
{
    free(r->out);
    free(r->err);
}

static void expect_code(const cli_result *r, int code)
{
    if (r->code != code)
        fail_msg("exit %d, expected %d\n--- stdout:\n%s--- stderr:\n%s", r->code, code, r->out,
                 r->err);
}

static void expect_in(const char *text, const char *needle, const char *where)
{
    if (strstr(text, needle) == NULL)
        fail_msg("%s lacks \"%s\":\n%s", where, needle, text);
}

/* The value of a "key: value" line of the report, as a number. */
static double report_value(const char *out, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\n%s: ", key);
    const char *p = strstr(out, pat);
    if (p == NULL && strncmp(out, pat + 1, strlen(pat + 1)) == 0)
        p = out - 1;
    if (p == NULL)
        fail_msg("no '%s:' line in\n%s", key, out);
    return strtod(p + strlen(pat), NULL);
}

/* .npy of any dtype, written by hand (independent of the writer under test). */
static void write_npy_typed(const char *path, const char *descr, int ndim, const int64_t *shape,
                            const void *data, size_t elsize)
{
    char header[512], dims[256] = "";
    size_t count = 1;
    for (int x = 0; x < ndim; x++) {
        snprintf(dims + strlen(dims), sizeof dims - strlen(dims), "%lld,", (long long)shape[x]);
        count *= (size_t)shape[x];
    }
    int len = snprintf(header, sizeof header,
                       "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }\n", descr, dims);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)len,
                             (unsigned char)(len >> 8)};
    assert_int_equal(fwrite(pre, 1, 10, f), 10);
    assert_int_equal(fwrite(header, 1, (size_t)len, f), (size_t)len);
    if (count)
        assert_int_equal(fwrite(data, elsize, count, f), count);
    assert_int_equal(fclose(f), 0);
}

static void write_f32(const char *path, int ndim, const int64_t *shape, const float *data)
{
    assert_int_equal(mattn__npy_write(path, MATTN__NPY_F32, ndim, shape, data), MATTN_OK);
}

/* [B, L, H, Dm] BTHD -> the file layout ('t' BTHD, 'h' BHTD). */
static float *to_layout(const float *x, char layout, int64_t B, int64_t L, int64_t H, int64_t Dm)
{
    float *y = tl_alloc(sizeof(float) * (size_t)(B * L * H * Dm + 1));
    for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++)
            for (int64_t h = 0; h < H; h++)
                memcpy(y + (layout == 'h' ? ((b * H + h) * L + l) : ((b * L + l) * H + h)) * Dm,
                       x + ((b * L + l) * H + h) * Dm, sizeof(float) * (size_t)Dm);
    return y;
}

/* How the inputs of a problem are written. */
typedef struct file_style {
    char layout;      /* 't' bthd, 'h' bhtd */
    int f64;          /* q, k, v, bias and sinks as float64 */
    int i64_segments; /* segment ids as int64 */
    int bool_mask;    /* mask as '|b1' */
    int mask_ndim;    /* 2, 3 or 4 (0 = 4) for mask and bias */
} file_style;

static void write_floats(const char *path, int ndim, const int64_t *shape, const float *x,
                         int f64)
{
    if (!f64) {
        write_f32(path, ndim, shape, x);
        return;
    }
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    double *y = tl_alloc(sizeof(double) * (size_t)(n + 1));
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i];
    write_npy_typed(path, "<f8", ndim, shape, y, 8);
    free(y);
}

/* Shape of a [mb, mh, T, S] mask/bias written with `ndim` dimensions. */
static int broadcast_shape(int ndim, int64_t mb, int64_t mh, int64_t T, int64_t S, int64_t *s)
{
    if (ndim == 2) {
        assert_true(mb == 1 && mh == 1);
        s[0] = T, s[1] = S;
        return 2;
    }
    if (ndim == 3) {
        assert_true(mb == 1);
        s[0] = mh, s[1] = T, s[2] = S;
        return 3;
    }
    s[0] = mb, s[1] = mh, s[2] = T, s[3] = S;
    return 4;
}

/* Writes the problem's inputs into d and appends the matching options. */
static void write_problem(const tmpdir *d, const tc_problem *p, const file_style *st, argl *a)
{
    char L = st->layout ? st->layout : 't';
    int64_t qs[4] = {p->B, L == 'h' ? p->Hq : p->T, L == 'h' ? p->T : p->Hq, p->D};
    int64_t ks[4] = {p->B, L == 'h' ? p->Hkv : p->S, L == 'h' ? p->S : p->Hkv, p->D};
    int64_t vs[4] = {p->B, ks[1], ks[2], p->Dv};
    float *q = to_layout(p->q, L, p->B, p->T, p->Hq, p->D);
    float *k = to_layout(p->k, L, p->B, p->S, p->Hkv, p->D);
    float *v = to_layout(p->v, L, p->B, p->S, p->Hkv, p->Dv);
    write_floats(in_dir(d, "q.npy"), 4, qs, q, st->f64);
    write_floats(in_dir(d, "k.npy"), 4, ks, k, st->f64);
    write_floats(in_dir(d, "v.npy"), 4, vs, v, st->f64);
    free(q), free(k), free(v);
    arg(a, "--q"), arg(a, "%s", in_dir(d, "q.npy"));
    arg(a, "--k"), arg(a, "%s", in_dir(d, "k.npy"));
    arg(a, "--v"), arg(a, "%s", in_dir(d, "v.npy"));
    if (L == 'h')
        arg(a, "--layout"), arg(a, "bhtd");

    if (p->scale != 0.0)
        arg(a, "--scale"), arg(a, "%.17g", p->scale);
    if (p->causal)
        arg(a, "--causal");
    if (p->window_left != -1 || p->window_right != -1)
        arg(a, "--window=%lld,%lld", (long long)p->window_left, (long long)p->window_right);
    if (p->chunk)
        arg(a, "--chunk"), arg(a, "%lld", (long long)p->chunk);
    if (p->q_offset)
        arg(a, "--q-offset"), arg(a, "%lld", (long long)p->q_offset);
    if (p->kv_offset)
        arg(a, "--kv-offset=%lld", (long long)p->kv_offset);
    if (p->softcap != 0.0)
        arg(a, "--softcap"), arg(a, "%.17g", p->softcap);
    if (p->dropout_p > 0.0f)
        arg(a, "--dropout"), arg(a, "%.9g", (double)p->dropout_p);
    if (p->seed)
        arg(a, "--seed"), arg(a, "%llu", (unsigned long long)p->seed);
    if (p->sinks) {
        int64_t s[1] = {p->Hq};
        write_floats(in_dir(d, "sinks.npy"), 1, s, p->sinks, st->f64);
        arg(a, "--sinks"), arg(a, "%s", in_dir(d, "sinks.npy"));
    }
    if (p->q_seg) {
        int64_t qs2[2] = {p->B, p->T}, ks2[2] = {p->B, p->S};
        if (st->i64_segments) {
            int64_t *x = tl_alloc(sizeof(int64_t) * (size_t)(p->B * (p->T + p->S) + 1));
            for (int64_t i = 0; i < p->B * p->T; i++)
                x[i] = p->q_seg[i];
            write_npy_typed(in_dir(d, "qseg.npy"), "<i8", 2, qs2, x, 8);
            for (int64_t i = 0; i < p->B * p->S; i++)
                x[i] = p->kv_seg[i];
            write_npy_typed(in_dir(d, "kseg.npy"), "<i8", 2, ks2, x, 8);
            free(x);
        } else {
            assert_int_equal(mattn__npy_write(in_dir(d, "qseg.npy"), MATTN__NPY_I32, 2, qs2,
                                              p->q_seg), MATTN_OK);
            assert_int_equal(mattn__npy_write(in_dir(d, "kseg.npy"), MATTN__NPY_I32, 2, ks2,
                                              p->kv_seg), MATTN_OK);
        }
        arg(a, "--q-segments"), arg(a, "%s", in_dir(d, "qseg.npy"));
        arg(a, "--kv-segments"), arg(a, "%s", in_dir(d, "kseg.npy"));
    }
    if (p->mask) {
        int64_t s[4];
        int nd = broadcast_shape(st->mask_ndim ? st->mask_ndim : 4, p->mask_b, p->mask_h, p->T,
                                 p->S, s);
        if (st->bool_mask) {
            int64_t n = p->mask_b * p->mask_h * p->T * p->S;
            uint8_t *m = tl_alloc((size_t)n + 1);
            for (int64_t i = 0; i < n; i++)
                m[i] = p->mask[i] != 0;
            write_npy_typed(in_dir(d, "mask.npy"), "|b1", nd, s, m, 1);
            free(m);
        } else {
            assert_int_equal(mattn__npy_write(in_dir(d, "mask.npy"), MATTN__NPY_U8, nd, s,
                                              p->mask), MATTN_OK);
        }
        arg(a, "--mask"), arg(a, "%s", in_dir(d, "mask.npy"));
    }
    if (p->bias) {
        int64_t s[4];
        int nd = broadcast_shape(st->mask_ndim ? st->mask_ndim : 4, p->bias_b, p->bias_h, p->T,
                                 p->S, s);
        write_floats(in_dir(d, "bias.npy"), nd, s, p->bias, st->f64);
        arg(a, "--bias"), arg(a, "%s", in_dir(d, "bias.npy"));
    }
}

/* Reads a float32 output and checks its shape. */
static float *read_output(const char *path, int ndim, const int64_t *shape)
{
    mattn__npy_array x;
    int rc = mattn__npy_read(path, &x);
    if (rc)
        fail_msg("%s", mattn_last_error());
    assert_int_equal(x.dtype, MATTN__NPY_F32);
    assert_string_equal(x.descr, "<f4");
    assert_int_equal(x.ndim, ndim);
    for (int i = 0; i < ndim; i++)
        assert_int_equal(x.shape[i], shape[i]);
    return x.data; /* the caller frees */
}

/* `mattn run --op op` on the problem written in `style`; compares --out and
 * --lse (and --weights for vanilla) with the float64 reference. */
static void run_and_compare_ex(const tc_problem *p, const char *op, const file_style *style,
                               int weights, const char *const *extra)
{
    tmpdir d = dir_make();
    argl a = {.n = 0};
    arg(&a, "run"), arg(&a, "--op"), arg(&a, "%s", op);
    write_problem(&d, p, style, &a);
    for (; extra && *extra; extra++)
        arg(&a, "%s", *extra);
    arg(&a, "--out"), arg(&a, "%s", in_dir(&d, "o.npy"));
    arg(&a, "--lse"), arg(&a, "%s", in_dir(&d, "lse.npy"));
    if (weights)
        arg(&a, "--weights"), arg(&a, "%s", in_dir(&d, "w.npy"));
    cli_result r = cli_argl(MPI_COMM_SELF, &a);
    expect_code(&r, 0);
    char want[64];
    snprintf(want, sizeof want, "op: %s\n", op);
    expect_in(r.out, want, "report");
    if (strcmp(op, "sdpa") != 0) {
        snprintf(want, sizeof want, "kernel: %s\n", op);
        expect_in(r.out, want, "report");
    }
    expect_in(r.out, "\nout: ", "report");

    char L = style->layout ? style->layout : 't';
    int64_t os[4] = {p->B, L == 'h' ? p->Hq : p->T, L == 'h' ? p->T : p->Hq, p->Dv};
    int64_t ls[3] = {p->B, p->Hq, p->T}, ws[4] = {p->B, p->Hq, p->T, p->S};
    float *o = read_output(in_dir(&d, "o.npy"), 4, os);
    float *lse = read_output(in_dir(&d, "lse.npy"), 3, ls);
    float *o_bthd = o;
    if (L == 'h') { /* back to BTHD */
        o_bthd = tl_alloc(sizeof(float) * (size_t)(p->B * p->T * p->Hq * p->Dv + 1));
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t h = 0; h < p->Hq; h++)
                for (int64_t t = 0; t < p->T; t++)
                    memcpy(o_bthd + ((b * p->T + t) * p->Hq + h) * p->Dv,
                           o + ((b * p->Hq + h) * p->T + t) * p->Dv, sizeof(float) * (size_t)p->Dv);
    }
    size_t rows = (size_t)(p->B * p->T * p->Hq);
    double *ro = tl_alloc(sizeof(double) * (rows * (size_t)p->Dv + 1));
    double *rl = tl_alloc(sizeof(double) * (rows + 1));
    double *to = tl_alloc(sizeof(double) * (rows + 1));
    double *tlse = tl_alloc(sizeof(double) * (rows + 1));
    double *rw = weights ? tl_alloc(sizeof(double) * (rows * (size_t)p->S + 1)) : NULL;
    double *tw = weights ? tl_alloc(sizeof(double) * (rows + 1)) : NULL;
    tc_reference(p, ro, rl, rw, to, tlse, tw);
    char what[64];
    snprintf(what, sizeof what, "mattn run --op %s (layout %c)", op, L);
    tc_check_o(what, p, o_bthd, ro, to);
    tc_check_lse(what, p, lse, rl, tlse);
    if (weights) {
        float *w = read_output(in_dir(&d, "w.npy"), 4, ws);
        for (size_t x = 0; x < rows * (size_t)p->S; x++)
            tl_assert_close(w[x], rw[x], tw[x / (size_t)p->S] * rw[x] + 0x1p-24, "weight %zu", x);
        free(w);
    }
    if (o_bthd != o)
        free(o_bthd);
    free(o), free(lse), free(ro), free(rl), free(to), free(tlse), free(rw), free(tw);
    /* Only inputs and outputs: no temporary left behind. */
    assert_int_equal(dir_count(&d, ".tmp."), 0);
    cli_free(&r);
    argl_free(&a);
    dir_free(&d);
}

static void run_and_compare(const tc_problem *p, const char *op, const file_style *style,
                            int weights)
{
    run_and_compare_ex(p, op, style, weights, NULL);
}

static void run_all_ops(const tc_problem *p, const file_style *st)
{
    run_and_compare(p, "vanilla", st, 0);
    run_and_compare(p, "flash", st, 0);
    run_and_compare(p, "sdpa", st, 0);
}

static tc_problem make(uint64_t seed, int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv,
                       int64_t D, int64_t Dv)
{
    tl_rng r = tl_rng_make(seed);
    return tc_make(&r, B, T, S, Hq, Hkv, D, Dv, 1.0);
}

static void add_segments(tc_problem *p, tl_rng *r)
{
    p->q_seg = tl_alloc(sizeof(int32_t) * (size_t)(p->B * p->T + 1));
    p->kv_seg = tl_alloc(sizeof(int32_t) * (size_t)(p->B * p->S + 1));
    for (int64_t x = 0; x < p->B * p->T; x++)
        p->q_seg[x] = (int32_t)tl_int(r, 4) - 1; /* -1 = padding */
    for (int64_t x = 0; x < p->B * p->S; x++)
        p->kv_seg[x] = (int32_t)tl_int(r, 4) - 1;
}

static void add_mask(tc_problem *p, tl_rng *r, int64_t mb, int64_t mh)
{
    int64_t n = mb * mh * p->T * p->S;
    p->mask_b = mb, p->mask_h = mh;
    p->mask = tl_alloc((size_t)n + 1);
    for (int64_t x = 0; x < n; x++)
        p->mask[x] = (uint8_t)(tl_int(r, 4) != 0 ? 1 + tl_int(r, 9) : 0);
}

static void add_bias(tc_problem *p, tl_rng *r, int64_t bb, int64_t bh)
{
    int64_t n = bb * bh * p->T * p->S;
    p->bias_b = bb, p->bias_h = bh;
    p->bias = tl_alloc(sizeof(float) * (size_t)(n + 1));
    tl_fill(r, p->bias, n, 2.0);
}

#endif
