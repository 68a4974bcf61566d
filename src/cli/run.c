/* `mattn run`: one forward pass of vanilla, flash or sdpa, on .npy files or a
 * synthetic problem, with timing and an optional float64 check.
 *
 * Rank 0 does the job in separate steps over one problem struct:
 *   run_load     inputs from files (or synthetic), every shape checked,
 *   run_open     output files created (as temporaries) before computing,
 *   run_compute  warm-up and timed calls of the library,
 *   run_check    the float64 reference (--check),
 *   run_write    outputs written, then renamed into place together,
 * so a distributed path (--mesh / --op ring) can scatter after run_load and
 * gather before run_write. Other ranks wait; all return rank 0's status. */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/npy.h"
#include "cli/reference.h"
#include "core/problem.h"
#include "core/status.h"

enum { OP_VANILLA, OP_SDPA, OP_FLASH };
enum { LAYOUT_BTHD, LAYOUT_BHTD };

static const char *const OP_NAMES[] = {"vanilla", "sdpa", "flash"};

/* ------------------------------------------------------------------ options */

typedef struct run_config {
    int op, layout;
    const char *q, *k, *v, *out, *lse, *weights;
    const char *q_seg, *kv_seg, *mask, *bias, *sinks;
    int causal;
    int64_t window[2], chunk, q_offset, kv_offset;
    double scale, softcap, dropout;
    uint64_t seed;
    int64_t threads, block_q, block_kv, warmup, repeat;
    int quiet, check;
    int64_t check_rows;
    int64_t batch, seq, kv_seq, heads, kv_heads, dim, dv; /* synthetic problem */
    int synthetic;
} run_config;

#define OFF(field) offsetof(run_config, field)
#define SECTION(title) {.kind = MATTN__OPT_SECTION, .name = title}
#define FLAG(n, f, h) {.kind = MATTN__OPT_FLAG, .name = n, .offset = OFF(f), .help = h}
#define FILEOPT(n, f, h) \
    {.kind = MATTN__OPT_STRING, .name = n, .offset = OFF(f), .metavar = "FILE", .help = h}
#define INT(n, f, meta, lo, hi, h)                                                  \
    {.kind = MATTN__OPT_INT, .name = n, .offset = OFF(f), .metavar = meta, .help = h, \
     .imin = lo, .imax = hi}
#define PAIR(n, f, meta, lo, hi, h)                                                  \
    {.kind = MATTN__OPT_PAIR, .name = n, .offset = OFF(f), .metavar = meta, .help = h, \
     .imin = lo, .imax = hi}
#define FLT(n, f, meta, lo, hi, fl, h)                                                \
    {.kind = MATTN__OPT_FLOAT, .name = n, .offset = OFF(f), .metavar = meta, .help = h, \
     .fmin = lo, .fmax = hi, .flags = fl}
#define CHOICE(n, f, words, h) \
    {.kind = MATTN__OPT_CHOICE, .name = n, .offset = OFF(f), .choices = words, .help = h}

/* Bounds the library enforces (src/core/problem.c), checked here too so a
 * bad value is a usage error before any file is read. */
#define POS_MAX ((int64_t)1 << 60)

static const mattn__opt OPTS[] = {
    SECTION("operator and files"),
    CHOICE("op", op, "vanilla|sdpa|flash",
           "operator (default sdpa): vanilla materialises the logits, flash is the blockwise "
           "online softmax, sdpa picks one and prints it as 'kernel:'"),
    FILEOPT("q", q, "queries [B,T,Hq,D] (bthd) or [B,Hq,T,D] (bhtd), float32/float64; give "
                    "--q --k --v together, or none for a synthetic problem"),
    FILEOPT("k", k, "keys [B,S,Hkv,D] or [B,Hkv,S,D]; query head h reads kv head h/(Hq/Hkv)"),
    FILEOPT("v", v, "values [B,S,Hkv,Dv] or [B,Hkv,S,Dv]; Dv may differ from D"),
    FILEOPT("out", out, "write the output o, float32, in the input layout: [B,T,Hq,Dv] or "
                        "[B,Hq,T,Dv] (default: not written)"),
    FILEOPT("lse", lse, "write the natural-log log-sum-exp, float32 [B,Hq,T]: -inf (or the "
                        "sink) for a row with no allowed key (default: not written)"),
    FILEOPT("weights", weights, "vanilla only: write the softmax probabilities before dropout, "
                                "float32 [B,Hq,T,S] (default: not written)"),
    CHOICE("layout", layout, "bthd|bhtd",
           "how --q/--k/--v/--out are laid out: bthd = [B,T,H,D] as JAX (default), bhtd = "
           "[B,H,T,D] as PyTorch"),

    SECTION("which keys a query sees (SPEC 3: row i is at qp = q_offset+i, key j at "
            "kp = kv_offset+j)"),
    FLAG("causal", causal, "allow key j only if kp <= qp: top-left aligned; --q-offset S-T "
                           "aligns bottom-right (default off)"),
    PAIR("window", window, "L,R", -1, POS_MAX,
         "allow qp-L <= kp <= qp+R, inclusive on both sides; -1 = that side unbounded "
         "(default -1,-1: off)"),
    INT("chunk", chunk, "C", 0, POS_MAX,
        "allow only keys of the query's chunk: floor(qp/C) == floor(kp/C) (default 0: off)"),
    INT("q-offset", q_offset, "N", -POS_MAX, POS_MAX,
        "absolute position of query row 0 (default 0)"),
    INT("kv-offset", kv_offset, "N", -POS_MAX, POS_MAX, "absolute position of key 0 (default 0)"),
    FILEOPT("q-segments", q_seg, "query segment ids [B,T], int32/int64: allowed iff the ids "
                                 "are equal and >= 0 (negative = padding); needs --kv-segments"),
    FILEOPT("kv-segments", kv_seg, "key segment ids [B,S], int32/int64; needs --q-segments"),
    FILEOPT("mask", mask, "bool/uint8, nonzero = allowed, broadcast as NumPy does: [T,S], "
                          "[Hq|1,T,S] or [B|1,Hq|1,T,S] (default none)"),

    SECTION("logits and softmax (SPEC 4)"),
    FLT("scale", scale, "X", -FLT_MAX, FLT_MAX, MATTN__OPT_NONZERO,
        "logit s = X * dot(q_i, k_j); finite and nonzero (default 1/sqrt(D))"),
    FLT("softcap", softcap, "X", 0.0, FLT_MAX, 0,
        "when X > 0, s = X * tanh(s / X), before the bias (default 0: off)"),
    FILEOPT("bias", bias, "additive logit bias after the cap, float32/float64, shaped like "
                          "--mask (default none)"),
    FILEOPT("sinks", sinks, "one extra logit per head [Hq], float32/float64: counted in the "
                            "softmax denominator, adds no value (default none)"),
    FLT("dropout", dropout, "P", 0.0, 1.0, MATTN__OPT_BELOW_MAX,
        "drop weight (i,j) when u(seed,b,h,qp,kp) < P after normalisation, scale kept ones "
        "by 1/(1-P); P in [0,1); lse unaffected (default 0)"),
    {.kind = MATTN__OPT_U64, .name = "seed", .offset = OFF(seed), .metavar = "N",
     .help = "dropout seed; also seeds the synthetic inputs (default 0)"},

    SECTION("execution"),
    INT("threads", threads, "N", 0, 4096, "worker threads, 0 = all usable CPUs (default 1)"),
    INT("block-q", block_q, "N", 0, 65536,
        "flash query block rows, 0 = tuned default (default 0); not with --op vanilla"),
    INT("block-kv", block_kv, "N", 0, 65536,
        "flash key block rows, 0 = tuned default (default 0); not with --op vanilla"),
    INT("warmup", warmup, "N", 0, 1000000,
        "untimed runs before the timed ones (default 1 synthetic, 0 with files)"),
    INT("repeat", repeat, "N", 1, 1000000,
        "timed runs; best and median times are reported (default 3 synthetic, 1 with files)"),
    FLAG("quiet", quiet, "no progress lines on stderr (errors are still printed)"),

    SECTION("synthetic problem (without --q/--k/--v; q, k and v uniform in (-1, 1))"),
    INT("batch", batch, "N", 0, (int64_t)1 << 20, "B (default 1)"),
    INT("seq", seq, "N", 0, (int64_t)1 << 31, "T, query rows (default 2048)"),
    INT("kv-seq", kv_seq, "N", 0, (int64_t)1 << 31, "S, keys (default: --seq)"),
    INT("heads", heads, "N", 1, 65536, "Hq, query heads (default 16)"),
    INT("kv-heads", kv_heads, "N", 1, 65536,
        "Hkv, key/value heads, must divide --heads (default: --heads, i.e. MHA)"),
    INT("dim", dim, "N", 1, 65536, "D, query/key head dim (default 128)"),
    INT("dv", dv, "N", 1, 65536, "Dv, value head dim (default: --dim)"),

    SECTION("checking"),
    FLAG("check", check, "compare o, lse (and --weights) with the command's own float64 "
                         "reference of SPEC 3-4; exit 1 if an error exceeds its fp32 bound"),
    INT("check-rows", check_rows, "N", 0, (int64_t)1 << 62,
        "with --check: compare N evenly spaced (b,h,i) rows only (default 0: all rows)"),
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static const char *const SYNTHETIC_ONLY[] = {"batch", "seq", "kv-seq", "heads",
                                              "kv-heads", "dim", "dv"};

static void print_help(FILE *out)
{
    fprintf(out,
            "usage: mattn run [--op vanilla|sdpa|flash] [--q Q.npy --k K.npy --v V.npy]\n"
            "                 [--out O.npy] [--lse LSE.npy] [options]\n"
            "\n"
            "One attention forward pass, o_i = sum_j softmax_j(s_ij) v_j over the allowed keys,\n"
            "with the exact semantics of SPEC 3-4 (docs/semantics.md). With --q/--k/--v it reads\n"
            "those .npy files; without them it builds a synthetic problem (see below). The\n"
            "library is called --warmup times untimed, then --repeat times timed.\n"
            "\n"
            "stdout gets 'key: value' lines: op, kernel (what sdpa chose), the shapes, scale,\n"
            "allowed_pairs and flop (2*(D+Dv) per (query, key) pair that causal/window/chunk\n"
            "allow, times B*Hq), time_best_s, time_median_s, gflops_best, gflops_median, and\n"
            "with --check max_abs_err_o, max_abs_err_lse, max_err_over_bound, check. stderr\n"
            "gets progress and errors. No output file is created unless everything succeeds.\n"
            "Under mpirun rank 0 does the whole job and every rank exits with its status.\n");
    mattn__opts_help(out, OPTS, N_OPTS);
    fprintf(out,
            "\n"
            "examples:\n"
            "  mattn run --op flash --q q.npy --k k.npy --v v.npy --causal --out o.npy\n"
            "  mattn run --op sdpa --seq 4096 --heads 32 --kv-heads 8 --causal --threads 0\n"
            "  mattn run --op flash --seq 8192 --window 1023,0 --check --check-rows 2000\n");
}

static int usage(FILE *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage(FILE *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(err, "mattn run: ");
        vfprintf(err, fmt, ap);
        fprintf(err, "\n(see 'mattn run --help')\n");
        va_end(ap);
    }
    return MATTN__CLI_EXIT_USAGE;
}

/* Checks that span several options; returns an exit status. */
static int validate(run_config *c, const unsigned char *given, FILE *err)
{
#define GIVEN(name) given[mattn__opts_find(OPTS, N_OPTS, name)]
    int files = (c->q != NULL) + (c->k != NULL) + (c->v != NULL);
    if (files != 0 && files != 3)
        return usage(err, "--q, --k and --v go together (or give none for a synthetic problem)");
    c->synthetic = files == 0;
    for (size_t x = 0; !c->synthetic && x < sizeof SYNTHETIC_ONLY / sizeof *SYNTHETIC_ONLY; x++)
        if (GIVEN(SYNTHETIC_ONLY[x]))
            return usage(err, "--%s describes a synthetic problem and cannot be combined "
                              "with --q/--k/--v", SYNTHETIC_ONLY[x]);
    if ((c->q_seg != NULL) != (c->kv_seg != NULL))
        return usage(err, "--q-segments and --kv-segments go together");
    if (c->weights && c->op != OP_VANILLA)
        return usage(err, "--weights needs --op vanilla (only vanilla materialises the "
                          "probabilities)");
    if ((GIVEN("block-q") || GIVEN("block-kv")) && c->op == OP_VANILLA)
        return usage(err, "--block-q/--block-kv tune flash; --op vanilla has no blocks");
    if (GIVEN("check-rows") && !c->check)
        return usage(err, "--check-rows needs --check");
    /* The library takes float: a value may round to 1 (rejected) or to 0
     * (which would silently mean "default" or "off"). */
    if (GIVEN("scale") && (float)c->scale == 0.0f)
        return usage(err, "--scale: %g rounds to 0 in float32", c->scale);
    if (c->softcap != 0.0 && (float)c->softcap == 0.0f)
        return usage(err, "--softcap: %g rounds to 0 in float32", c->softcap);
    if ((float)c->dropout >= 1.0f)
        return usage(err, "--dropout: %.17g rounds to 1 in float32; P must be below 1", c->dropout);
    const char *outs[] = {c->out, c->lse, c->weights};
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            if (outs[a] && outs[b] && strcmp(outs[a], outs[b]) == 0)
                return usage(err, "the same file '%s' is given for two outputs", outs[a]);
    if (c->synthetic) {
        if (!GIVEN("kv-seq"))
            c->kv_seq = c->seq;
        if (!GIVEN("kv-heads"))
            c->kv_heads = c->heads;
        if (!GIVEN("dv"))
            c->dv = c->dim;
        if (c->heads % c->kv_heads != 0)
            return usage(err, "--heads %" PRId64 " is not a multiple of --kv-heads %" PRId64,
                         c->heads, c->kv_heads);
    }
    if (!GIVEN("warmup"))
        c->warmup = c->synthetic ? 1 : 0;
    if (!GIVEN("repeat"))
        c->repeat = c->synthetic ? 3 : 1;
    return MATTN__CLI_EXIT_OK;
#undef GIVEN
}

static int run_parse(run_config *c, int argc, char **argv, FILE *err)
{
    memset(c, 0, sizeof *c);
    c->op = OP_SDPA;
    c->layout = LAYOUT_BTHD;
    c->window[0] = c->window[1] = -1;
    c->threads = 1;
    c->batch = 1, c->seq = 2048, c->heads = 16, c->dim = 128;
    unsigned char given[N_OPTS];
    int code = mattn__opts_parse("run", OPTS, N_OPTS, argc, argv, 1, c, given, err);
    if (code == MATTN__CLI_EXIT_OK)
        code = validate(c, given, err);
    return code;
}

/* ------------------------------------------------------------------ problem */

/* Everything one forward pass needs, loaded on rank 0. Arrays not given are
 * zeroed (data NULL). Tensors are views over the arrays in the file layout. */
typedef struct run_problem {
    int64_t B, T, S, Hq, Hkv, D, Dv;
    mattn__npy_array q, k, v;
    mattn__npy_array sinks, q_seg, kv_seg, mask, bias;
    mattn_tensor tq, tk, tv, to;
    mattn_options opts;
    float *o, *lse, *weights; /* lse/weights NULL when not wanted */
} run_problem;

static void run_free(run_problem *p)
{
    mattn__npy_free(&p->q);
    mattn__npy_free(&p->k);
    mattn__npy_free(&p->v);
    mattn__npy_free(&p->sinks);
    mattn__npy_free(&p->q_seg);
    mattn__npy_free(&p->kv_seg);
    mattn__npy_free(&p->mask);
    mattn__npy_free(&p->bias);
    free(p->o);
    free(p->lse);
    free(p->weights);
    memset(p, 0, sizeof *p);
}

static const char *dtype_class(mattn__npy_dtype d)
{
    return d == MATTN__NPY_F32 ? "float32 or float64"
           : d == MATTN__NPY_I32 ? "int32 or int64"
                                 : "bool or uint8";
}

/* Reads an optional input (path NULL: nothing) and checks its element type. */
static int load_typed(const char *path, const char *role, mattn__npy_dtype want,
                      mattn__npy_array *a)
{
    if (path == NULL)
        return MATTN_OK;
    int rc = mattn__npy_read(path, a);
    if (rc == MATTN_OK && a->dtype != want) {
        rc = mattn__fail(MATTN_ERR_IO, "%s: %s has dtype '%s' but must be %s", path, role,
                         a->descr, dtype_class(want));
        mattn__npy_free(a);
    }
    return rc;
}

static const char *shape_of(const mattn__npy_array *a, char *buf, size_t n)
{
    return mattn__npy_shape_str(a->shape, a->ndim, buf, n);
}

/* [B, L, H, Dim] of q/k/v in the chosen layout; l, h, d name the dims. */
static int layout_dims(const run_config *c, const char *path, const char *role, const char *l,
                       const char *h, const char *d, const mattn__npy_array *a, int64_t out[4])
{
    char shp[160];
    int bthd = c->layout == LAYOUT_BTHD;
    if (a->ndim != 4)
        return mattn__fail(MATTN_ERR_SHAPE, "%s: %s has shape %s but must be 4-d [B, %s, %s, %s] "
                           "(--layout %s)", path, role, shape_of(a, shp, sizeof shp),
                           bthd ? l : h, bthd ? h : l, d, bthd ? "bthd" : "bhtd");
    out[0] = a->shape[0];
    out[1] = a->shape[bthd ? 1 : 2];
    out[2] = a->shape[bthd ? 2 : 1];
    out[3] = a->shape[3];
    if (out[2] < 1 || out[3] < 1)
        return mattn__fail(MATTN_ERR_SHAPE, "%s: %s has shape %s: heads and head_dim must be "
                           ">= 1", path, role, shape_of(a, shp, sizeof shp));
    return MATTN_OK;
}

static int load_qkv_files(const run_config *c, run_problem *p)
{
    int rc;
    int64_t q[4], k[4], v[4];
    if ((rc = load_typed(c->q, "q", MATTN__NPY_F32, &p->q)) ||
        (rc = load_typed(c->k, "k", MATTN__NPY_F32, &p->k)) ||
        (rc = load_typed(c->v, "v", MATTN__NPY_F32, &p->v)) ||
        (rc = layout_dims(c, c->q, "q", "T", "Hq", "D", &p->q, q)) ||
        (rc = layout_dims(c, c->k, "k", "S", "Hkv", "D", &p->k, k)) ||
        (rc = layout_dims(c, c->v, "v", "S", "Hkv", "Dv", &p->v, v)))
        return rc;
    if (k[0] != q[0] || v[0] != q[0])
        return mattn__fail(MATTN_ERR_SHAPE, "batch sizes differ: %s has %" PRId64 ", %s has %"
                           PRId64 ", %s has %" PRId64, c->q, q[0], c->k, k[0], c->v, v[0]);
    if (v[1] != k[1])
        return mattn__fail(MATTN_ERR_SHAPE, "%s has %" PRId64 " keys but %s has %" PRId64
                           " values", c->k, k[1], c->v, v[1]);
    if (v[2] != k[2])
        return mattn__fail(MATTN_ERR_SHAPE, "%s has %" PRId64 " heads but %s has %" PRId64,
                           c->k, k[2], c->v, v[2]);
    if (k[3] != q[3])
        return mattn__fail(MATTN_ERR_SHAPE, "%s has head_dim %" PRId64 " but %s has %" PRId64,
                           c->q, q[3], c->k, k[3]);
    if (q[2] % k[2] != 0)
        return mattn__fail(MATTN_ERR_SHAPE, "q_heads=%" PRId64 " (%s) is not a multiple of "
                           "kv_heads=%" PRId64 " (%s)", q[2], c->q, k[2], c->k);
    p->B = q[0], p->T = q[1], p->Hq = q[2], p->D = q[3];
    p->S = k[1], p->Hkv = k[2], p->Dv = v[3];
    return MATTN_OK;
}

/* Uniform (-1, 1) floats from a splitmix64 stream. */
static void fill_uniform(float *x, int64_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (int64_t i = 0; i < n; i++) {
        uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        x[i] = (float)((double)(z >> 40) / 8388608.0 - 1.0); /* 24 bits over (-1, 1) */
    }
}

/* A synthetic [B, L, H, Dim] tensor (or [B, H, L, Dim] for bhtd). */
static int make_synthetic(const run_config *c, mattn__npy_array *a, int64_t B, int64_t L,
                          int64_t H, int64_t Dm, uint64_t stream)
{
    int64_t n;
    if (__builtin_mul_overflow(B, L, &n) || __builtin_mul_overflow(n, H, &n) ||
        __builtin_mul_overflow(n, Dm, &n) || (uint64_t)n > SIZE_MAX / sizeof(float))
        return mattn__fail(MATTN_ERR_NOMEM, "synthetic tensor [%" PRId64 ", %" PRId64 ", %"
                           PRId64 ", %" PRId64 "] is too large", B, L, H, Dm);
    a->dtype = MATTN__NPY_F32;
    snprintf(a->descr, sizeof a->descr, "<f4");
    a->ndim = 4;
    a->shape[0] = B;
    a->shape[1] = c->layout == LAYOUT_BTHD ? L : H;
    a->shape[2] = c->layout == LAYOUT_BTHD ? H : L;
    a->shape[3] = Dm;
    a->count = n;
    a->data = malloc(n ? (size_t)n * sizeof(float) : 1);
    if (a->data == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "out of memory for a synthetic tensor of %" PRId64
                           " floats", n);
    fill_uniform(a->data, n, c->seed * 0x100000001b3ULL + stream);
    return MATTN_OK;
}

/* Mask and bias: NumPy broadcasting of [T,S], [X,T,S] or [X,Y,T,S] to
 * [B, Hq, T, S], where each leading dim must be 1 or the full size. (A 3-d
 * array is [Hq|1, T, S], as NumPy reads it, not [B, T, S].) */
static int broadcast_dims(const char *path, const char *role, const mattn__npy_array *a,
                          const run_problem *p, int64_t *mb, int64_t *mh)
{
    char shp[160];
    int n = a->ndim;
    *mb = n == 4 ? a->shape[0] : 1;
    *mh = n == 4 ? a->shape[1] : n == 3 ? a->shape[0] : 1;
    if (n < 2 || n > 4 || a->shape[n - 2] != p->T || a->shape[n - 1] != p->S ||
        (*mb != 1 && *mb != p->B) || (*mh != 1 && *mh != p->Hq))
        return mattn__fail(MATTN_ERR_SHAPE,
                           "%s: %s has shape %s, which does not broadcast to [B, Hq, T, S] = [%"
                           PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "] (accepted: [T, S], "
                           "[Hq|1, T, S], [B|1, Hq|1, T, S])",
                           path, role, shape_of(a, shp, sizeof shp), p->B, p->Hq, p->T, p->S);
    return MATTN_OK;
}

static int alloc_floats(float **x, int64_t a, int64_t b, int64_t c, int64_t d, const char *what)
{
    int64_t n;
    if (__builtin_mul_overflow(a, b, &n) || __builtin_mul_overflow(n, c, &n) ||
        __builtin_mul_overflow(n, d, &n) || (uint64_t)n > SIZE_MAX / sizeof(float) ||
        (*x = malloc(n ? (size_t)n * sizeof(float) : 1)) == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "out of memory for %s [%" PRId64 ", %" PRId64
                           ", %" PRId64 ", %" PRId64 "]", what, a, b, c, d);
    return MATTN_OK;
}

static int run_load(const run_config *c, run_problem *p)
{
    int rc;
    char shp[160];
    memset(p, 0, sizeof *p);
    if (c->synthetic) {
        p->B = c->batch, p->T = c->seq, p->S = c->kv_seq;
        p->Hq = c->heads, p->Hkv = c->kv_heads, p->D = c->dim, p->Dv = c->dv;
        if ((rc = make_synthetic(c, &p->q, p->B, p->T, p->Hq, p->D, 1)) ||
            (rc = make_synthetic(c, &p->k, p->B, p->S, p->Hkv, p->D, 2)) ||
            (rc = make_synthetic(c, &p->v, p->B, p->S, p->Hkv, p->Dv, 3)))
            return rc;
    } else if ((rc = load_qkv_files(c, p))) {
        return rc;
    }

    /* Optional inputs, each checked against the problem's sizes. */
    if ((rc = load_typed(c->sinks, "sinks", MATTN__NPY_F32, &p->sinks)) ||
        (rc = load_typed(c->q_seg, "q segment ids", MATTN__NPY_I32, &p->q_seg)) ||
        (rc = load_typed(c->kv_seg, "kv segment ids", MATTN__NPY_I32, &p->kv_seg)) ||
        (rc = load_typed(c->mask, "mask", MATTN__NPY_U8, &p->mask)) ||
        (rc = load_typed(c->bias, "bias", MATTN__NPY_F32, &p->bias)))
        return rc;
    if (c->sinks && (p->sinks.ndim != 1 || p->sinks.shape[0] != p->Hq))
        return mattn__fail(MATTN_ERR_SHAPE, "%s: sinks have shape %s but must be [Hq] = [%"
                           PRId64 "]", c->sinks, shape_of(&p->sinks, shp, sizeof shp), p->Hq);
    if (c->q_seg && (p->q_seg.ndim != 2 || p->q_seg.shape[0] != p->B || p->q_seg.shape[1] != p->T))
        return mattn__fail(MATTN_ERR_SHAPE, "%s: q segment ids have shape %s but must be [B, T] "
                           "= [%" PRId64 ", %" PRId64 "]", c->q_seg,
                           shape_of(&p->q_seg, shp, sizeof shp), p->B, p->T);
    if (c->kv_seg &&
        (p->kv_seg.ndim != 2 || p->kv_seg.shape[0] != p->B || p->kv_seg.shape[1] != p->S))
        return mattn__fail(MATTN_ERR_SHAPE, "%s: kv segment ids have shape %s but must be [B, "
                           "S] = [%" PRId64 ", %" PRId64 "]", c->kv_seg,
                           shape_of(&p->kv_seg, shp, sizeof shp), p->B, p->S);
    int64_t mb = 1, mh = 1, bb = 1, bh = 1;
    if ((c->mask && (rc = broadcast_dims(c->mask, "mask", &p->mask, p, &mb, &mh))) ||
        (c->bias && (rc = broadcast_dims(c->bias, "bias", &p->bias, p, &bb, &bh))))
        return rc;

    /* Views in the file layout, and the options. */
    mattn_tensor (*view)(const float *, int64_t, int64_t, int64_t, int64_t) =
        c->layout == LAYOUT_BTHD ? mattn_tensor_bthd : mattn_tensor_bhtd;
    p->tq = view(p->q.data, p->B, p->T, p->Hq, p->D);
    p->tk = view(p->k.data, p->B, p->S, p->Hkv, p->D);
    p->tv = view(p->v.data, p->B, p->S, p->Hkv, p->Dv);
    mattn_options *o = &p->opts;
    *o = mattn_options_default();
    o->scale = (float)c->scale; /* 0 (not given) selects 1/sqrt(D) */
    o->causal = c->causal;
    o->q_offset = c->q_offset;
    o->kv_offset = c->kv_offset;
    o->window_left = c->window[0];
    o->window_right = c->window[1];
    o->chunk = c->chunk;
    o->softcap = (float)c->softcap;
    o->q_segment_ids = p->q_seg.data;
    o->kv_segment_ids = p->kv_seg.data;
    o->sinks = p->sinks.data;
    if (c->mask)
        o->mask = mattn_mask_dense(p->mask.data, mb, mh, p->T, p->S);
    if (c->bias)
        o->bias = mattn_bias_dense(p->bias.data, bb, bh, p->T, p->S);
    o->dropout_p = (float)c->dropout;
    o->dropout_seed = c->seed;
    o->threads = (int)c->threads;
    o->block_q = (int)c->block_q;
    o->block_kv = (int)c->block_kv;

    /* Outputs. With --check they start as NaN, so an element the kernel
     * never wrote cannot pass. */
    if ((rc = alloc_floats(&p->o, p->B, p->T, p->Hq, p->Dv, "the output o")) ||
        ((c->lse || c->check) && (rc = alloc_floats(&p->lse, p->B, p->Hq, p->T, 1, "lse"))) ||
        (c->weights && (rc = alloc_floats(&p->weights, p->B, p->Hq, p->T, p->S, "weights"))))
        return rc;
    if (c->check)
        for (int64_t x = 0; x < p->B * p->T * p->Hq * p->Dv; x++)
            p->o[x] = NAN;
    p->to = view(p->o, p->B, p->T, p->Hq, p->Dv);
    return MATTN_OK;
}

/* ------------------------------------------------------------------ outputs */

typedef struct run_outputs {
    mattn__npy_writer w[3]; /* out, lse, weights */
    const char *path[3];
} run_outputs;

static int run_open(const run_config *c, run_outputs *w)
{
    w->path[0] = c->out, w->path[1] = c->lse, w->path[2] = c->weights;
    for (int x = 0; x < 3; x++) {
        memset(&w->w[x], 0, sizeof w->w[x]);
        w->w[x].fd = -1;
    }
    for (int x = 0; x < 3; x++)
        if (w->path[x]) {
            int rc = mattn__npy_writer_open(&w->w[x], w->path[x]);
            if (rc)
                return rc;
        }
    return MATTN_OK;
}

static void run_abort(run_outputs *w)
{
    for (int x = 0; x < 3; x++)
        mattn__npy_writer_abort(&w->w[x]);
}

/* Writes every output to its temporary file, then renames them all; if a
 * rename fails, the ones already renamed are removed again. */
static int run_write(const run_config *c, const run_problem *p, run_outputs *w)
{
    int rc = MATTN_OK;
    int64_t o_shape[4] = {p->B, c->layout == LAYOUT_BTHD ? p->T : p->Hq,
                          c->layout == LAYOUT_BTHD ? p->Hq : p->T, p->Dv};
    int64_t lse_shape[3] = {p->B, p->Hq, p->T};
    int64_t w_shape[4] = {p->B, p->Hq, p->T, p->S};
    if (w->path[0])
        rc = mattn__npy_writer_put(&w->w[0], MATTN__NPY_F32, 4, o_shape, p->o);
    if (rc == MATTN_OK && w->path[1])
        rc = mattn__npy_writer_put(&w->w[1], MATTN__NPY_F32, 3, lse_shape, p->lse);
    if (rc == MATTN_OK && w->path[2])
        rc = mattn__npy_writer_put(&w->w[2], MATTN__NPY_F32, 4, w_shape, p->weights);
    for (int x = 0; rc == MATTN_OK && x < 3; x++)
        if (w->path[x] && (rc = mattn__npy_writer_commit(&w->w[x])))
            for (int y = 0; y < x; y++)
                if (w->path[y])
                    unlink(w->path[y]);
    return rc;
}

/* ------------------------------------------------------------------ compute */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct run_timing {
    mattn_kernel kernel;
    double best, median;
} run_timing;

static int forward(const run_config *c, run_problem *p, mattn_kernel *kernel)
{
    switch (c->op) {
    case OP_VANILLA:
        *kernel = MATTN_KERNEL_VANILLA;
        return mattn_vanilla_forward(&p->tq, &p->tk, &p->tv, &p->to, p->lse, p->weights,
                                     &p->opts);
    case OP_FLASH:
        *kernel = MATTN_KERNEL_FLASH;
        return mattn_flash_forward(&p->tq, &p->tk, &p->tv, &p->to, p->lse, &p->opts);
    default:
        return mattn_sdpa_forward(&p->tq, &p->tk, &p->tv, &p->to, p->lse, &p->opts, kernel);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_compute(const run_config *c, run_problem *p, run_timing *t)
{
    FILE *err = mattn__cli_err();
    double *times = malloc(sizeof(double) * (size_t)c->repeat);
    if (times == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "out of memory");
    int rc = MATTN_OK;
    for (int64_t x = 0; x < c->warmup + c->repeat && rc == MATTN_OK; x++) {
        double t0 = now_s();
        rc = forward(c, p, &t->kernel);
        double dt = now_s() - t0;
        int warm = x < c->warmup;
        if (!warm)
            times[x - c->warmup] = dt;
        if (rc == MATTN_OK && !c->quiet)
            fprintf(err, "mattn run: %s %" PRId64 "/%" PRId64 ": %.4f s\n",
                    warm ? "warm-up" : "run", warm ? x + 1 : x - c->warmup + 1,
                    warm ? c->warmup : c->repeat, dt);
    }
    if (rc == MATTN_OK) {
        qsort(times, (size_t)c->repeat, sizeof *times, cmp_double);
        int64_t n = c->repeat;
        t->best = times[0];
        t->median = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
    }
    free(times);
    return rc;
}

/* ------------------------------------------------------------------ check */

typedef struct progress_ctx {
    FILE *err;
    double start, last;
    int quiet, finished;
} progress_ctx;

/* At most one line every 2 s, plus the final one. */
static void check_progress(void *vctx, int64_t done, int64_t total)
{
    progress_ctx *pc = vctx;
    double t = now_s();
    if (pc->quiet || pc->finished || (done < total && t - pc->last < 2.0))
        return;
    pc->last = t;
    pc->finished = done == total;
    fprintf(pc->err, "mattn run: check: %" PRId64 "/%" PRId64 " rows (%.0f%%), %.1f s\n", done,
            total, total ? 100.0 * (double)done / (double)total : 100.0, t - pc->start);
}

static int run_check(const run_config *c, const run_problem *p, mattn__ref_report *r)
{
    mattn__ref_problem rp = {&p->tq, &p->tk, &p->tv, &p->to, p->lse, p->weights, &p->opts};
    progress_ctx pc = {mattn__cli_err(), now_s(), now_s(), c->quiet, 0};
    return mattn__ref_check(&rp, c->check_rows, mattn__resolve_threads((int)c->threads),
                            check_progress, &pc, r);
}

/* ------------------------------------------------------------------ report */

static void run_print(const run_config *c, const run_problem *p, const run_timing *t,
                      int ranks, const mattn__ref_report *r)
{
    FILE *out = mattn__cli_out();
    int64_t pairs = mattn__ref_structural_pairs(&p->opts, p->T, p->S);
    double all_pairs = (double)pairs * (double)p->B * (double)p->Hq;
    /* q.k costs 2D flops per pair and p.v 2Dv (4D when Dv = D, the usual count). */
    double flop = 2.0 * (double)(p->D + p->Dv) * all_pairs;
    double scale = c->scale != 0.0 ? (double)(float)c->scale
                                   : (double)(float)(1.0 / sqrt((double)p->D));
    fprintf(out, "op: %s\n", OP_NAMES[c->op]);
    fprintf(out, "kernel: %s\n", mattn_kernel_name(t->kernel));
    fprintf(out, "inputs: %s\n", c->synthetic ? "synthetic" : "files");
    fprintf(out, "layout: %s\n", c->layout == LAYOUT_BTHD ? "bthd" : "bhtd");
    fprintf(out, "batch: %" PRId64 "\nseq: %" PRId64 "\nkv_seq: %" PRId64 "\n", p->B, p->T, p->S);
    fprintf(out, "heads: %" PRId64 "\nkv_heads: %" PRId64 "\n", p->Hq, p->Hkv);
    fprintf(out, "dim: %" PRId64 "\ndv: %" PRId64 "\n", p->D, p->Dv);
    fprintf(out, "scale: %.9g\n", scale);
    fprintf(out, "threads: %d\n", mattn__resolve_threads((int)c->threads));
    fprintf(out, "ranks: %d\n", ranks);
    fprintf(out, "allowed_pairs: %.0f\n", all_pairs);
    fprintf(out, "flop: %.0f\n", flop);
    fprintf(out, "warmup: %" PRId64 "\nrepeat: %" PRId64 "\n", c->warmup, c->repeat);
    fprintf(out, "time_best_s: %.6f\ntime_median_s: %.6f\n", t->best, t->median);
    fprintf(out, "gflops_best: %.3f\n", t->best > 0 ? flop / t->best * 1e-9 : 0.0);
    fprintf(out, "gflops_median: %.3f\n", t->median > 0 ? flop / t->median * 1e-9 : 0.0);
    if (r) {
        fprintf(out, "check_rows: %" PRId64 "\n", r->rows);
        fprintf(out, "max_abs_err_o: %.9g\n", r->max_err_o);
        fprintf(out, "max_abs_err_lse: %.9g\n", r->max_err_lse);
        if (p->weights)
            fprintf(out, "max_abs_err_weights: %.9g\n", r->max_err_weights);
        fprintf(out, "max_err_over_bound: %.9g\n", r->max_ratio);
        fprintf(out, "check: %s\n", r->max_ratio <= 1.0 ? "pass" : "fail");
    }
}

/* ------------------------------------------------------------------ command */

static int run_root(const run_config *c, int ranks)
{
    run_problem p;
    run_outputs w;
    run_timing t = {MATTN_KERNEL_VANILLA, 0, 0};
    mattn__ref_report r;
    int code = MATTN__CLI_EXIT_OK;
    memset(&w, 0, sizeof w);
    for (int x = 0; x < 3; x++)
        w.w[x].fd = -1;

    int rc = run_load(c, &p);
    if (rc == MATTN_OK)
        rc = run_open(c, &w);
    if (rc == MATTN_OK)
        rc = run_compute(c, &p, &t);
    if (rc == MATTN_OK && c->check)
        rc = run_check(c, &p, &r);
    if (rc != MATTN_OK) {
        code = mattn__cli_report("run", rc);
        goto done;
    }
    run_print(c, &p, &t, ranks, c->check ? &r : NULL);
    if (c->check && !(r.max_ratio <= 1.0)) {
        int64_t row = r.worst_row, T = p.T, Hq = p.Hq;
        fprintf(mattn__cli_err(), "mattn run: check failed: an error is %.3g times its fp32 "
                "bound (worst at b=%" PRId64 ", h=%" PRId64 ", t=%" PRId64 "); no output "
                "written\n", r.max_ratio, row / (Hq * T), row / T % Hq, row % T);
        code = MATTN__CLI_EXIT_RUNTIME;
        goto done;
    }
    if ((rc = run_write(c, &p, &w))) {
        code = mattn__cli_report("run", rc);
        goto done;
    }
    for (int x = 0; x < 3; x++)
        if (w.path[x])
            fprintf(mattn__cli_out(), "%s: %s\n", x == 0 ? "out" : x == 1 ? "lse" : "weights",
                    w.path[x]);

done:
    run_abort(&w); /* removes temporaries; nothing after a commit */
    run_free(&p);
    return code;
}

int mattn__cli_run(MPI_Comm comm, int argc, char **argv)
{
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    run_config c;
    int code = run_parse(&c, argc, argv, rank == 0 ? mattn__cli_err() : NULL);
    /* Agree on the parse verdict (ranks see the same argv unless a launcher
     * mangles it): usage error > help > ok, so help is sent as 1. */
    int vote = mattn__cli_agree_max(comm, code == MATTN__CLI_HELP ? 1 : code);
    code = vote == 1 ? MATTN__CLI_HELP : vote;
    if (code == MATTN__CLI_HELP) {
        if (rank == 0)
            print_help(mattn__cli_out());
        return MATTN__CLI_EXIT_OK;
    }
    if (code != MATTN__CLI_EXIT_OK)
        return code;
    if (rank == 0) {
        code = run_root(&c, size);
        fflush(mattn__cli_out());
        fflush(mattn__cli_err());
    }
    return mattn__cli_root_code(comm, code);
}
