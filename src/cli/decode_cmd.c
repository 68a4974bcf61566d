/* `mattn decode`: ar, ragged or paged decode (SPEC §5) on .npy files or a
 * synthetic problem, on one rank or with the cache split over the ranks.
 *
 * Steps, over one problem struct:
 *   dec_load       rank 0: inputs from files (or synthetic), shapes checked,
 *                  paged metadata validated by the library's own checks
 *                  before the CLI reads a page;
 *   dec_share      the sizes and the small arrays (q, lengths, sinks) to
 *                  every rank; each rank allocates its part and the ranks
 *                  agree on the status before any cache data moves;
 *   dec_distribute contiguous caches through mattn_mesh_scatter (sp split of
 *                  the keys, mattn_split's rule); paged caches as each rank's
 *                  token range of every sequence repacked into local pages;
 *   dec_compute    warm-up and timed calls: the single-rank operators on one
 *                  rank, the *_mesh ones (mesh 1 x 1 x P) under mpirun, so
 *                  every rank ends with the whole answer;
 *   dec_check      rank 0: the float64 reference (decode_ref.c) on sampled rows;
 *   dec_write      rank 0: outputs written to temporaries opened before the
 *                  compute, renamed into place only if everything succeeded.
 * Every rank returns rank 0's exit status. */
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
#include "cli/attn.h"
#include "cli/cli.h"
#include "cli/decode_ref.h"
#include "cli/npy.h"
#include "core/problem.h"
#include "core/scratch.h"
#include "core/status.h"
#include "decode/decode.h"

enum { OP_AR, OP_RAGGED, OP_PAGED };
static const char *const OP_NAMES[] = {"ar", "ragged", "paged"};

/* ------------------------------------------------------------------ options */

typedef struct dec_config {
    int op;
    const char *q, *k, *v, *starts, *ends, *index, *table, *lens, *cu, *sinks;
    const char *out, *lse, *m, *l;
    int64_t window[2], chunk;
    double scale, softcap;
    int64_t threads, block_kv, warmup, repeat;
    int quiet, check;
    int64_t check_rows;
    int64_t batch, kv_len, heads, kv_heads, dim, dv, page_size, q_len;
    uint64_t seed;
    int synthetic;
} dec_config;

#define OFF(field) offsetof(dec_config, field)
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

#define POS_MAX ((int64_t)1 << 60)
#define LEN_MAX ((int64_t)INT32_MAX) /* lengths and page ids are int32 in the API */

static const mattn__opt OPTS[] = {
    SECTION("operator and files (int arrays: int32 or int64; floats: float32 or float64)"),
    CHOICE("op", op, "ar|ragged|paged",
           "operator (default ragged): ar = mattn_ar_decode, ragged = mattn_ragged_decode, "
           "paged = mattn_paged_forward"),
    FILEOPT("q", q, "queries: ar/ragged [B,Hq,D] or [B,1,Hq,D]; paged packed [total_q,Hq,D] "
                    "or [1,total_q,Hq,D]; give --q --k --v together, or none for a synthetic "
                    "problem"),
    FILEOPT("k", k, "keys: ar/ragged the cache [B,S,Hkv,D]; paged the page pool "
                    "[num_pages,page_size,Hkv,D]; query head h reads kv head h/(Hq/Hkv)"),
    FILEOPT("v", v, "values: [B,S,Hkv,Dv] or [num_pages,page_size,Hkv,Dv]; Dv may differ "
                    "from D"),
    FILEOPT("starts", starts, "ar/ragged: first key of each sequence [B] (default all 0)"),
    FILEOPT("index", index, "ar: [B] end of each sequence's keys, exclusive, counting the new "
                            "token (its query sits at index-1); required with --op ar files"),
    FILEOPT("ends", ends, "ragged: [B] end of each sequence's keys, exclusive (EasyDeL's "
                          "lengths; query at ends-1); required with --op ragged files"),
    FILEOPT("page-table", table, "paged: [num_seqs,max_pages]; token t of sequence s is in "
                                 "page page_table[s, t/page_size]; required with paged files"),
    FILEOPT("kv-lens", lens, "paged: [num_seqs] tokens of each sequence; required with paged "
                             "files"),
    FILEOPT("cu-q-lens", cu, "paged: [num_seqs+1] sequence s owns query rows cu[s]..cu[s+1]-1, "
                             "its last positions (default 0,1,..,num_seqs: one query each)"),
    FILEOPT("out", out, "write o, float32, shaped like --q with Dv last (default: not written)"),
    FILEOPT("lse", lse, "write the log-sum-exp, float32: ar/ragged [B,Hq], paged [Hq,total_q]; "
                        "-inf (or the sink) for a row with no key (default: not written)"),
    FILEOPT("m", m, "ragged: write the row's largest logit [B,Hq] (sink included)"),
    FILEOPT("l", l, "ragged: write sum exp(s - m) [B,Hq] (sink included), lse = m + log l"),

    SECTION("which keys a query sees (SPEC 3, absolute positions; decode is causal)"),
    PAIR("window", window, "L,R", -1, POS_MAX,
         "allow qp-L <= kp <= qp+R, inclusive; -1 = unbounded (default -1,-1). JAX "
         "sliding_window=w is --window w-1,0"),
    INT("chunk", chunk, "C", 0, POS_MAX,
        "allow only keys with floor(qp/C) == floor(kp/C) (default 0: off)"),

    SECTION("logits and softmax (SPEC 4)"),
    FLT("scale", scale, "X", -FLT_MAX, FLT_MAX, MATTN__OPT_NONZERO,
        "logit s = X * dot(q, k); finite and nonzero (default 1/sqrt(D))"),
    FLT("softcap", softcap, "X", 0.0, FLT_MAX, 0,
        "when X > 0, s = X * tanh(s / X) (default 0: off)"),
    FILEOPT("sinks", sinks, "one extra logit per q head [Hq] in the softmax denominator, no "
                            "value (GPT-OSS sinks, EasyDeL softmax_aux; default none)"),

    SECTION("execution"),
    INT("threads", threads, "N", 0, 4096, "worker threads per rank, 0 = all usable CPUs "
                                          "(default 1)"),
    INT("block-kv", block_kv, "N", 0, 1 << 30,
        "split-KV piece in keys, 0 = library default 2048 (results do not depend on threads)"),
    INT("warmup", warmup, "N", 0, 1000000,
        "untimed calls before the timed ones (default 1 synthetic, 0 with files)"),
    INT("repeat", repeat, "N", 1, 1000000,
        "timed calls; best and median are reported (default 5 synthetic, 1 with files)"),
    FLAG("quiet", quiet, "no progress lines on stderr (errors are still printed)"),

    SECTION("synthetic problem (without --q/--k/--v; q, k, v uniform in (-1, 1))"),
    INT("batch", batch, "N", 1, 1 << 20, "B, sequences (default 8)"),
    INT("kv-len", kv_len, "N", 1, LEN_MAX, "S, keys of every sequence (default 4096)"),
    INT("heads", heads, "N", 1, 65536, "Hq, query heads (default 32)"),
    INT("kv-heads", kv_heads, "N", 1, 65536, "Hkv, kv heads, divides --heads (default 8)"),
    INT("dim", dim, "N", 1, 65536, "D, query/key head dim (default 128)"),
    INT("dv", dv, "N", 1, 65536, "Dv, value head dim (default: --dim)"),
    INT("page-size", page_size, "N", 1, 1 << 20,
        "paged: tokens per page; pages are used in a shuffled order (default 16)"),
    INT("q-len", q_len, "N", 1, LEN_MAX,
        "paged: queries per sequence, its last positions (default 1: decode)"),
    {.kind = MATTN__OPT_U64, .name = "seed", .offset = OFF(seed), .metavar = "N",
     .help = "seed of the synthetic inputs and page order (default 0)"},

    SECTION("checking"),
    FLAG("check", check, "compare o, lse (and m, l) with the command's own float64 reference "
                         "of SPEC 3-5; exit 1 if an error exceeds its fp32 bound"),
    INT("check-rows", check_rows, "N", 0, (int64_t)1 << 62,
        "with --check: compare N evenly spaced (query, head) rows (default 0: all rows)"),
};
#define N_OPTS (sizeof OPTS / sizeof OPTS[0])

static const char *const SYNTHETIC_ONLY[] = {"batch", "kv-len", "heads", "kv-heads", "dim",
                                              "dv", "page-size", "q-len"};

static void print_help(FILE *out)
{
    fprintf(out,
            "usage: mattn decode [--op ar|ragged|paged] [--q Q.npy --k K.npy --v V.npy\n"
            "                    (--index I.npy | --ends E.npy | --page-table P.npy\n"
            "                     --kv-lens L.npy [--cu-q-lens C.npy])] [--out O.npy] [options]\n"
            "\n"
            "Attention of a few new queries over a KV cache (SPEC 5, docs/decode.md): ar and\n"
            "ragged decode one query per sequence at its last position over a contiguous\n"
            "cache; paged reads the keys through a page table and takes packed queries of any\n"
            "number of sequences (prefill, decode or mixed). Without --q/--k/--v it builds a\n"
            "synthetic problem and reports throughput.\n"
            "\n"
            "stdout gets 'key: value' lines: op, the shapes, kv_bytes (bytes of K/V the\n"
            "kernel reads: 4*Hkv*(D+Dv) per key position a sequence's queries may see),\n"
            "time_best_s, time_median_s, tokens_per_s (queries per second) and gbps (kv_bytes\n"
            "per second), at the median; with --check max_abs_err_o, max_abs_err_lse,\n"
            "max_err_over_bound, check. No output file is created unless everything succeeds.\n"
            "Under mpirun with P ranks the cache is split over the ranks (rank r holds keys\n"
            "mattn_split(len, P, r) of every sequence, pages repacked locally), the *_mesh\n"
            "operators merge the partials, and rank 0 reads the inputs and writes the outputs.\n");
    mattn__opts_help(out, OPTS, N_OPTS);
    fprintf(out,
            "\n"
            "examples:\n"
            "  mattn decode --op ragged --q q.npy --k k.npy --v v.npy --ends ends.npy --out o.npy\n"
            "  mattn decode --op paged --q q.npy --k kp.npy --v vp.npy --page-table pt.npy \\\n"
            "               --kv-lens lens.npy --cu-q-lens cu.npy --window 127,0 --out o.npy\n"
            "  mattn decode --op paged --batch 8 --kv-len 32768 --threads 0 --check --check-rows 64\n"
            "  mpirun -np 4 mattn decode --op ar --batch 8 --kv-len 16384 --check\n");
}

static int usage(FILE *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage(FILE *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(err, "mattn decode: ");
        vfprintf(err, fmt, ap);
        fprintf(err, "\n(see 'mattn decode --help')\n");
        va_end(ap);
    }
    return MATTN__CLI_EXIT_USAGE;
}

static int validate(dec_config *c, const unsigned char *given, FILE *err)
{
#define GIVEN(name) given[mattn__opts_find(OPTS, N_OPTS, name)]
    int files = (c->q != NULL) + (c->k != NULL) + (c->v != NULL);
    if (files != 0 && files != 3)
        return usage(err, "--q, --k and --v go together (or give none for a synthetic problem)");
    c->synthetic = files == 0;
    const char *meta[] = {"starts", "index", "ends", "page-table", "kv-lens", "cu-q-lens"};
    for (size_t x = 0; x < sizeof meta / sizeof *meta; x++)
        if (c->synthetic && GIVEN(meta[x]))
            return usage(err, "--%s describes a file problem: give --q, --k and --v too", meta[x]);
    for (size_t x = 0; !c->synthetic && x < sizeof SYNTHETIC_ONLY / sizeof *SYNTHETIC_ONLY; x++)
        if (GIVEN(SYNTHETIC_ONLY[x]))
            return usage(err, "--%s describes a synthetic problem and cannot be combined "
                              "with --q/--k/--v", SYNTHETIC_ONLY[x]);
    const int ar = c->op == OP_AR, ragged = c->op == OP_RAGGED, paged = c->op == OP_PAGED;
    if (!ar && c->index)
        return usage(err, "--index is the end of an ar decode's keys; --op %s takes %s",
                     OP_NAMES[c->op], ragged ? "--ends" : "--kv-lens");
    if (!ragged && c->ends)
        return usage(err, "--ends belongs to --op ragged (ar takes --index, paged --kv-lens)");
    if (!ragged && (c->m || c->l))
        return usage(err, "--m and --l (raw softmax statistics) need --op ragged");
    if (paged && c->starts)
        return usage(err, "--starts is for contiguous caches; a paged sequence starts at 0");
    if (!paged && (c->table || c->lens || c->cu))
        return usage(err, "--page-table, --kv-lens and --cu-q-lens need --op paged");
    if (!paged && (GIVEN("page-size") || GIVEN("q-len")))
        return usage(err, "--page-size and --q-len describe a synthetic paged problem "
                          "(--op paged)");
    if (!c->synthetic && ar && !c->index)
        return usage(err, "--op ar needs --index (the end of each sequence's keys)");
    if (!c->synthetic && ragged && !c->ends)
        return usage(err, "--op ragged needs --ends (the end of each sequence's keys)");
    if (!c->synthetic && paged && (!c->table || !c->lens))
        return usage(err, "--op paged needs --page-table and --kv-lens");
    if (GIVEN("check-rows") && !c->check)
        return usage(err, "--check-rows needs --check");
    if (GIVEN("scale") && (float)c->scale == 0.0f)
        return usage(err, "--scale: %g rounds to 0 in float32", c->scale);
    if (c->softcap != 0.0 && (float)c->softcap == 0.0f)
        return usage(err, "--softcap: %g rounds to 0 in float32", c->softcap);
    const char *outs[] = {c->out, c->lse, c->m, c->l};
    for (int a = 0; a < 4; a++)
        for (int b = a + 1; b < 4; b++)
            if (outs[a] && outs[b] && strcmp(outs[a], outs[b]) == 0)
                return usage(err, "the same file '%s' is given for two outputs", outs[a]);
    if (c->synthetic) {
        if (!GIVEN("dv"))
            c->dv = c->dim;
        if (c->heads % c->kv_heads != 0)
            return usage(err, "--heads %" PRId64 " is not a multiple of --kv-heads %" PRId64,
                         c->heads, c->kv_heads);
        if (c->q_len > c->kv_len)
            return usage(err, "--q-len %" PRId64 " exceeds --kv-len %" PRId64, c->q_len,
                         c->kv_len);
        if (c->batch * c->q_len > LEN_MAX)
            return usage(err, "--batch x --q-len = %" PRId64 " query rows is too many",
                         c->batch * c->q_len);
    }
    if (!GIVEN("warmup"))
        c->warmup = c->synthetic ? 1 : 0;
    if (!GIVEN("repeat"))
        c->repeat = c->synthetic ? 5 : 1;
    return MATTN__CLI_EXIT_OK;
#undef GIVEN
}

static int dec_parse(dec_config *c, int argc, char **argv, FILE *err)
{
    memset(c, 0, sizeof *c);
    c->op = OP_RAGGED;
    c->window[0] = c->window[1] = -1;
    c->threads = 1;
    c->batch = 8, c->kv_len = 4096, c->heads = 32, c->kv_heads = 8, c->dim = 128;
    c->page_size = 16, c->q_len = 1;
    unsigned char given[N_OPTS];
    int code = mattn__opts_parse("decode", OPTS, N_OPTS, argc, argv, 1, c, given, err);
    if (code == MATTN__CLI_EXIT_OK)
        code = validate(c, given, err);
    return code;
}

/* ------------------------------------------------------------------ problem */

/* The problem as every rank holds it. On rank 0 before distribution (and
 * for --check) `k`, `v`, `table` are the global cache; each rank's part goes
 * to the local fields. Arrays are plain malloc'ed buffers owned here. */
typedef struct dec_problem {
    /* sizes, the same on every rank (shared as META_N int64s) */
    int64_t op, B, T, Hq, Hkv, D, Dv, S, npages, ps, mp, q_ndim;
    int64_t has_starts, has_sinks, want_lse, want_m, want_l;
    /* small arrays, the same on every rank */
    float *q, *sinks;
    int32_t *starts, *ends, *lens, *cu; /* ends: index (ar), ends (ragged), kv_lens (paged) */
    /* the global cache (rank 0) */
    float *k, *v;
    int32_t *table;
    /* this rank's part of the cache */
    float *k_loc, *v_loc;
    int32_t *table_loc, *lens_loc, *starts_loc;
    int64_t S_loc, off_loc, npages_loc, mp_loc;
    /* outputs (whole on every rank) */
    float *o, *lse, *m, *l;
} dec_problem;
#define META_N 17

static void dec_free(dec_problem *p)
{
    int loc_is_global = p->k_loc == p->k;
    free(p->q), free(p->sinks), free(p->starts), free(p->ends), free(p->cu);
    free(p->k), free(p->v), free(p->table);
    if (!loc_is_global)
        free(p->k_loc), free(p->v_loc), free(p->table_loc);
    free(p->lens_loc), free(p->starts_loc);
    free(p->o), free(p->lse), free(p->m), free(p->l);
    memset(p, 0, sizeof *p);
}

/* A [dims] buffer of `size`-byte elements, or NULL with MATTN_ERR_NOMEM
 * naming `what` (mattn__attn_count: "too large" when the sizes overflow). */
static void *alloc_n(const char *what, size_t size, int k, const int64_t *dims)
{
    int64_t n = 0;
    void *x = NULL;
    if (mattn__attn_count(what, k, dims, size, &n) == MATTN_OK &&
        (x = malloc(n ? (size_t)n * size : 1)) == NULL)
        mattn__fail(MATTN_ERR_NOMEM, "out of memory for %s (%" PRId64 " elements)", what, n);
    return x;
}

static const char *dtype_class(mattn__npy_dtype d)
{
    return d == MATTN__NPY_F32 ? "float32 or float64" : "int32 or int64";
}

/* Reads path, checks its element type and that it is ndim-d with the
 * dims in want (-1: any), and hands its data over to *data. */
static int load(const char *path, const char *role, mattn__npy_dtype type, int nd_lo, int nd_hi,
                mattn__npy_array *a)
{
    char shp[160];
    int rc = mattn__npy_read(path, a);
    if (rc)
        return rc;
    if (a->dtype != type)
        return mattn__fail(MATTN_ERR_IO, "%s: %s has dtype '%s' but must be %s", path, role,
                           a->descr, dtype_class(type));
    if (a->ndim < nd_lo || a->ndim > nd_hi)
        return mattn__fail(MATTN_ERR_SHAPE, "%s: %s has shape %s but must be %d-d%s", path,
                           role, mattn__npy_shape_str(a->shape, a->ndim, shp, sizeof shp), nd_lo,
                           nd_hi > nd_lo ? " or 4-d with a leading 1" : "");
    return MATTN_OK;
}

static void *take(mattn__npy_array *a)
{
    void *x = a->data;
    a->data = NULL;
    mattn__npy_free(a);
    return x;
}

/* A 1-d int array of n entries. */
static int load_vec(const char *path, const char *role, int64_t n, int32_t **out)
{
    mattn__npy_array a;
    char shp[160];
    int rc = load(path, role, MATTN__NPY_I32, 1, 1, &a);
    if (rc == MATTN_OK && a.shape[0] != n)
        rc = mattn__fail(MATTN_ERR_SHAPE, "%s: %s has shape %s but must be [%" PRId64 "]", path,
                         role, mattn__npy_shape_str(a.shape, a.ndim, shp, sizeof shp), n);
    if (rc == MATTN_OK)
        *out = take(&a);
    mattn__npy_free(&a);
    return rc;
}

static int load_files(const dec_config *c, dec_problem *p)
{
    int rc;
    char s1[160], s2[160], s3[160];
    mattn__npy_array q, k, v, t;
    memset(&q, 0, sizeof q), memset(&k, 0, sizeof k), memset(&v, 0, sizeof v);
    memset(&t, 0, sizeof t);
    const int paged = c->op == OP_PAGED;
    if ((rc = load(c->q, "q", MATTN__NPY_F32, 3, 4, &q)) ||
        (rc = load(c->k, "k", MATTN__NPY_F32, 4, 4, &k)) ||
        (rc = load(c->v, "v", MATTN__NPY_F32, 4, 4, &v)))
        goto done;
    /* q [X, Hq, D] or [X, 1, Hq, D] (ar/ragged) / [1, X, Hq, D] (paged) */
    int64_t X = q.shape[0], lead = 1;
    if (q.ndim == 4) {
        lead = paged ? q.shape[0] : q.shape[1];
        X = paged ? q.shape[1] : q.shape[0];
    }
    p->q_ndim = q.ndim;
    p->Hq = q.shape[q.ndim - 2], p->D = q.shape[q.ndim - 1];
    p->Hkv = k.shape[2], p->Dv = v.shape[3];
    if (lead != 1 || p->Hq < 1 || p->D < 1) {
        rc = mattn__fail(MATTN_ERR_SHAPE, "%s: q has shape %s but must be %s with Hq, D >= 1",
                         c->q, mattn__npy_shape_str(q.shape, q.ndim, s1, sizeof s1),
                         paged ? "[total_q, Hq, D] or [1, total_q, Hq, D]"
                               : "[B, Hq, D] or [B, 1, Hq, D]");
        goto done;
    }
    if (k.shape[0] != v.shape[0] || k.shape[1] != v.shape[1] || k.shape[2] != v.shape[2] ||
        k.shape[3] != p->D || p->Hkv < 1 || p->Dv < 1 || p->Hq % p->Hkv != 0) {
        rc = mattn__fail(MATTN_ERR_SHAPE, "q %s, k %s, v %s: need k [%s, Hkv, D] and v [same, "
                         "Hkv, Dv] with the D of q, Hkv >= 1 dividing Hq = %" PRId64,
                         mattn__npy_shape_str(q.shape, q.ndim, s1, sizeof s1),
                         mattn__npy_shape_str(k.shape, k.ndim, s2, sizeof s2),
                         mattn__npy_shape_str(v.shape, v.ndim, s3, sizeof s3),
                         paged ? "num_pages, page_size" : "B, S", p->Hq);
        goto done;
    }
    if (!paged && k.shape[0] != X) {
        rc = mattn__fail(MATTN_ERR_SHAPE, "%s has batch %" PRId64 " but %s has %" PRId64, c->q,
                         X, c->k, k.shape[0]);
        goto done;
    }
    p->T = X;
    if (paged) {
        p->npages = k.shape[0], p->ps = k.shape[1];
        if ((rc = load(c->table, "page table", MATTN__NPY_I32, 2, 2, &t)))
            goto done;
        p->B = t.shape[0], p->mp = t.shape[1];
        p->table = take(&t);
        if ((rc = load_vec(c->lens, "kv lengths", p->B, &p->ends)))
            goto done;
        if (c->cu) {
            if ((rc = load_vec(c->cu, "cu_q_lens", p->B + 1, &p->cu)))
                goto done;
        } else {
            if (p->T != p->B) {
                rc = mattn__fail(MATTN_ERR_SHAPE, "%s has %" PRId64 " queries for %" PRId64
                                 " sequences: without --cu-q-lens each sequence has one",
                                 c->q, p->T, p->B);
                goto done;
            }
            if ((p->cu = alloc_n("cu_q_lens", sizeof(int32_t), 1, (const int64_t[]){p->B + 1})) ==
                NULL) {
                rc = MATTN_ERR_NOMEM;
                goto done;
            }
            for (int64_t s = 0; s <= p->B; s++)
                p->cu[s] = (int32_t)s;
        }
    } else {
        p->B = X, p->S = k.shape[1];
        if ((rc = load_vec(c->op == OP_AR ? c->index : c->ends,
                           c->op == OP_AR ? "index" : "ends", p->B, &p->ends)))
            goto done;
        if (c->starts && (rc = load_vec(c->starts, "starts", p->B, &p->starts)))
            goto done;
    }
    p->q = take(&q), p->k = take(&k), p->v = take(&v);
done:
    mattn__npy_free(&q), mattn__npy_free(&k), mattn__npy_free(&v), mattn__npy_free(&t);
    return rc;
}

/* Uniform (-1, 1) floats from a splitmix64 stream. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static float *uniform(int64_t n, uint64_t seed, const char *what)
{
    float *x = alloc_n(what, sizeof(float), 1, &n);
    for (int64_t i = 0; x && i < n; i++)
        x[i] = (float)((double)(splitmix(&seed) >> 40) / 8388608.0 - 1.0);
    return x;
}

static int make_synthetic(const dec_config *c, dec_problem *p)
{
    const int paged = c->op == OP_PAGED;
    const uint64_t seed = c->seed * 0x100000001b3ULL;
    p->B = c->batch, p->Hq = c->heads, p->Hkv = c->kv_heads, p->D = c->dim, p->Dv = c->dv;
    p->q_ndim = 3;
    p->T = paged ? c->batch * c->q_len : c->batch;
    if (paged) {
        p->ps = c->page_size;
        p->mp = (c->kv_len + p->ps - 1) / p->ps;
        /* page ids are int32 (SPEC: page tables are int32) */
        if (__builtin_mul_overflow(p->B, p->mp, &p->npages) || p->npages > INT32_MAX)
            return mattn__fail(MATTN_ERR_SHAPE, "the synthetic page pool would need %lld x "
                               "%lld pages, more than int32 page ids can name",
                               (long long)p->B, (long long)p->mp);
    } else {
        p->S = c->kv_len;
    }
    /* Every size before any allocation: a problem too large to address fails
     * at once, not after gigabytes of q were filled. */
    const int64_t rows = paged ? p->npages : p->B, cols = paged ? p->ps : p->S;
    const int64_t qd[3] = {p->T, p->Hq, p->D}, kd[4] = {rows, cols, p->Hkv, p->D},
                  vd[4] = {rows, cols, p->Hkv, p->Dv};
    int64_t nq = 0, nk = 0, nv = 0;
    int rc;
    if ((rc = mattn__attn_count("q", 3, qd, sizeof(float), &nq)) ||
        (rc = mattn__attn_count("the key cache", 4, kd, sizeof(float), &nk)) ||
        (rc = mattn__attn_count("the value cache", 4, vd, sizeof(float), &nv)))
        return rc;
    if ((p->q = uniform(nq, seed + 1, "q")) == NULL ||
        (p->k = uniform(nk, seed + 2, "the key cache")) == NULL ||
        (p->v = uniform(nv, seed + 3, "the value cache")) == NULL ||
        (p->ends = alloc_n("lengths", sizeof(int32_t), 1, &p->B)) == NULL)
        return MATTN_ERR_NOMEM;
    for (int64_t b = 0; b < p->B; b++)
        p->ends[b] = (int32_t)c->kv_len;
    if (!paged)
        return MATTN_OK;
    if ((p->table = alloc_n("the page table", sizeof(int32_t), 1, &p->npages)) == NULL ||
        (p->cu = alloc_n("cu_q_lens", sizeof(int32_t), 1, (const int64_t[]){p->B + 1})) == NULL)
        return MATTN_ERR_NOMEM;
    for (int64_t i = 0; i < p->npages; i++)
        p->table[i] = (int32_t)i;
    uint64_t s = seed + 4;
    for (int64_t i = p->npages - 1; i > 0; i--) { /* pages used out of order */
        int64_t j = (int64_t)(splitmix(&s) % (uint64_t)(i + 1));
        int32_t x = p->table[i];
        p->table[i] = p->table[j], p->table[j] = x;
    }
    for (int64_t b = 0; b <= p->B; b++)
        p->cu[b] = (int32_t)(b * c->q_len);
    return MATTN_OK;
}

static mattn_options dec_options(const dec_config *c, const dec_problem *p)
{
    mattn_options o = mattn_options_default();
    o.scale = (float)c->scale; /* 0: 1/sqrt(D) */
    o.softcap = (float)c->softcap;
    o.window_left = c->window[0], o.window_right = c->window[1];
    o.chunk = c->chunk;
    o.sinks = p->sinks;
    o.threads = (int)c->threads;
    o.block_kv = (int)c->block_kv;
    return o;
}

/* The library's own argument checks on the global problem (rank 0), before
 * the command reads pages through the table to distribute them. */
static int validate_global(const dec_config *c, dec_problem *p)
{
    mattn_options o = dec_options(c, p);
    mattn__dec d;
    mattn_tensor q = mattn_tensor_bthd(p->q, p->op == OP_PAGED ? 1 : p->B,
                                       p->op == OP_PAGED ? p->T : 1, p->Hq, p->D);
    mattn_tensor out = mattn_tensor_bthd(NULL, q.batch, q.seq, p->Hq, p->Dv);
    int rc;
    if (p->op == OP_PAGED) {
        mattn_paged_kv kv = {.k_pages = mattn_tensor_bthd(p->k, p->npages, p->ps, p->Hkv, p->D),
                             .v_pages = mattn_tensor_bthd(p->v, p->npages, p->ps, p->Hkv, p->Dv),
                             .page_table = p->table, .num_seqs = p->B, .max_pages = p->mp,
                             .kv_lens = p->ends};
        float dummy;
        out.data = &dummy; /* shapes only: the kernel does not run */
        rc = mattn__dec_paged(&d, &q, &kv, p->cu, &out, &o, 1);
    } else {
        mattn_tensor k = mattn_tensor_bthd(p->k, p->B, p->S, p->Hkv, p->D);
        mattn_tensor v = mattn_tensor_bthd(p->v, p->B, p->S, p->Hkv, p->Dv);
        rc = mattn__dec_contiguous(&d, &q, &k, &v, p->starts, p->ends, NULL, &o, 1);
    }
    if (rc == MATTN_OK)
        mattn__scratch_put((void *)d.seq);
    return rc;
}

static int dec_load(const dec_config *c, dec_problem *p)
{
    int rc;
    memset(p, 0, sizeof *p);
    p->op = c->op;
    if ((rc = c->synthetic ? make_synthetic(c, p) : load_files(c, p)))
        return rc;
    if (c->sinks) {
        mattn__npy_array a;
        char shp[160];
        if ((rc = load(c->sinks, "sinks", MATTN__NPY_F32, 1, 1, &a)) == MATTN_OK &&
            a.shape[0] != p->Hq)
            rc = mattn__fail(MATTN_ERR_SHAPE, "%s: sinks have shape %s but must be [Hq] = [%"
                             PRId64 "]", c->sinks,
                             mattn__npy_shape_str(a.shape, a.ndim, shp, sizeof shp), p->Hq);
        if (rc == MATTN_OK)
            p->sinks = take(&a);
        mattn__npy_free(&a);
        if (rc)
            return rc;
    }
    p->has_starts = p->starts != NULL, p->has_sinks = p->sinks != NULL;
    p->want_lse = c->lse || c->check, p->want_m = c->m != NULL, p->want_l = c->l != NULL;
    return validate_global(c, p);
}

/* ------------------------------------------------------------------ sharing */

/* MPI_Bcast from rank 0 whose receivers sleep between polls: rank 0 may read
 * files for a while, and a blocking wait would busy-poll a core it needs. */
static int bcast_polite(void *buf, int count, MPI_Datatype type, MPI_Comm comm)
{
    MPI_Request req;
    if (MPI_Ibcast(buf, count, type, 0, comm, &req) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Ibcast failed");
    const struct timespec nap = {0, 1000000};
    for (int done = 0;;) {
        if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return mattn__fail(MATTN_ERR_MPI, "MPI_Test failed");
        if (done)
            return MATTN_OK;
        nanosleep(&nap, NULL);
    }
}

/* Large buffers in pieces (MPI counts are int). */
#define MSG_MAX ((int64_t)1 << 28)

static int bcast_big(void *buf, int64_t n, MPI_Datatype type, size_t size, MPI_Comm comm)
{
    for (int64_t at = 0; at < n; at += MSG_MAX) {
        int cnt = (int)(n - at < MSG_MAX ? n - at : MSG_MAX);
        if (MPI_Bcast((char *)buf + (size_t)at * size, cnt, type, 0, comm) != MPI_SUCCESS)
            return mattn__fail(MATTN_ERR_MPI, "MPI_Bcast failed");
    }
    return MATTN_OK;
}

static int send_big(const void *buf, int64_t n, MPI_Datatype type, size_t size, int to,
                    MPI_Comm comm)
{
    for (int64_t at = 0; at < n; at += MSG_MAX) {
        int cnt = (int)(n - at < MSG_MAX ? n - at : MSG_MAX);
        if (MPI_Send((const char *)buf + (size_t)at * size, cnt, type, to, 0, comm) !=
            MPI_SUCCESS)
            return mattn__fail(MATTN_ERR_MPI, "MPI_Send failed");
    }
    return MATTN_OK;
}

static int recv_big(void *buf, int64_t n, MPI_Datatype type, size_t size, MPI_Comm comm)
{
    for (int64_t at = 0; at < n; at += MSG_MAX) {
        int cnt = (int)(n - at < MSG_MAX ? n - at : MSG_MAX);
        if (MPI_Recv((char *)buf + (size_t)at * size, cnt, type, 0, 0, comm,
                     MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return mattn__fail(MATTN_ERR_MPI, "MPI_Recv failed");
    }
    return MATTN_OK;
}

/* Rank r's part of a paged cache: tokens mattn_split(len_s, P, r) of each
 * sequence in ceil(n / ps) local pages, in sequence order. */
static void paged_part(const dec_problem *p, int P, int r, int64_t *npages, int64_t *mp)
{
    *npages = 0, *mp = 0;
    for (int64_t s = 0; s < p->B; s++) {
        int64_t lo, n;
        mattn_split(p->ends[s], P, r, &lo, &n);
        int64_t need = (n + p->ps - 1) / p->ps;
        *npages += need;
        *mp = need > *mp ? need : *mp;
    }
}

/* Packs rank r's pages (k, v), its page table and token ranges from the
 * global pool (validated: every page id in range). */
static void paged_pack(const dec_problem *p, int P, int r, int64_t mp, float *k, float *v,
                       int32_t *table, int32_t *lens, int32_t *starts)
{
    const int64_t kr = p->Hkv * p->D, vr = p->Hkv * p->Dv, ps = p->ps;
    int64_t next = 0;
    for (int64_t s = 0; s < p->B; s++) {
        int64_t lo, n;
        mattn_split(p->ends[s], P, r, &lo, &n);
        starts[s] = (int32_t)lo, lens[s] = (int32_t)n;
        for (int64_t i = 0; i < mp; i++)
            table[s * mp + i] = i < (n + ps - 1) / ps ? (int32_t)(next + i) : -1;
        for (int64_t t = 0; t < n; t++) {
            int64_t g = lo + t, src = (int64_t)p->table[s * p->mp + g / ps] * ps + g % ps;
            int64_t dst = (next + t / ps) * ps + t % ps;
            memcpy(k + dst * kr, p->k + src * kr, sizeof(float) * (size_t)kr);
            memcpy(v + dst * vr, p->v + src * vr, sizeof(float) * (size_t)vr);
        }
        next += (n + ps - 1) / ps;
    }
}

/* Rank 0's verdict on loading plus the sizes, then the small arrays, then
 * each rank's local cache. Returns a library status, the same on every rank. */
static int dec_share(MPI_Comm comm, int load_rc, dec_problem *p, const mattn_mesh *mesh)
{
    int rank = 0, P = 1, rc = MATTN_OK;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    int64_t meta[META_N + 1] = {load_rc,     p->op,        p->B,      p->T,      p->Hq,
                                p->Hkv,      p->D,         p->Dv,     p->S,      p->npages,
                                p->ps,       p->mp,        p->q_ndim, p->has_starts,
                                p->has_sinks, p->want_lse, p->want_m, p->want_l};
    if (P > 1 && (rc = bcast_polite(meta, META_N + 1, MPI_INT64_T, comm)))
        return rc;
    if (meta[0] != MATTN_OK)
        return (int)meta[0]; /* rank 0 reports it */
    int64_t *fields[META_N] = {&p->op,     &p->B,          &p->T,         &p->Hq,
                               &p->Hkv,    &p->D,          &p->Dv,        &p->S,
                               &p->npages, &p->ps,         &p->mp,        &p->q_ndim,
                               &p->has_starts, &p->has_sinks, &p->want_lse, &p->want_m,
                               &p->want_l};
    for (int x = 0; x < META_N; x++)
        *fields[x] = meta[x + 1];

    const int paged = p->op == OP_PAGED;
    /* Allocate: small arrays (non-root), local cache, outputs. */
    const size_t i32 = sizeof(int32_t), f32 = sizeof(float);
    if (rank != 0) {
        if ((p->q = alloc_n("q", f32, 3, (const int64_t[]){p->T, p->Hq, p->D})) == NULL ||
            (p->ends = alloc_n("lengths", i32, 1, &p->B)) == NULL ||
            (p->has_starts && (p->starts = alloc_n("starts", i32, 1, &p->B)) == NULL) ||
            (p->has_sinks && (p->sinks = alloc_n("sinks", f32, 1, &p->Hq)) == NULL) ||
            (paged && (p->cu = alloc_n("cu_q_lens", i32, 1, (const int64_t[]){p->B + 1})) == NULL))
            rc = MATTN_ERR_NOMEM;
    }
    if (P > 1) { /* the small arrays first: the local sizes depend on the lengths */
        if (mattn__cli_agree_max(comm, rc != MATTN_OK) != 0)
            return rc != MATTN_OK ? rc
                                  : mattn__fail(MATTN_ERR_NOMEM, "another rank ran out of memory");
        if ((rc = bcast_big(p->q, p->T * p->Hq * p->D, MPI_FLOAT, sizeof(float), comm)) ||
            (rc = bcast_big(p->ends, p->B, MPI_INT32_T, sizeof(int32_t), comm)) ||
            (p->has_starts && (rc = bcast_big(p->starts, p->B, MPI_INT32_T, 4, comm))) ||
            (p->has_sinks && (rc = bcast_big(p->sinks, p->Hq, MPI_FLOAT, 4, comm))) ||
            (paged && (rc = bcast_big(p->cu, p->B + 1, MPI_INT32_T, 4, comm))))
            return rc;
    }
    if (rc == MATTN_OK && P == 1) {
        p->k_loc = p->k, p->v_loc = p->v, p->table_loc = p->table;
        p->S_loc = p->S, p->off_loc = 0, p->npages_loc = p->npages, p->mp_loc = p->mp;
    } else if (rc == MATTN_OK && paged) {
        paged_part(p, P, rank, &p->npages_loc, &p->mp_loc);
        int64_t np = p->npages_loc ? p->npages_loc : 1;
        if ((p->k_loc = alloc_n("local keys", f32, 4,
                                (const int64_t[]){np, p->ps, p->Hkv, p->D})) == NULL ||
            (p->v_loc = alloc_n("local values", f32, 4,
                                (const int64_t[]){np, p->ps, p->Hkv, p->Dv})) == NULL ||
            (p->table_loc = alloc_n("local table", i32, 2, (const int64_t[]){p->B, p->mp_loc})) ==
                NULL ||
            (p->lens_loc = alloc_n("local lengths", i32, 1, &p->B)) == NULL ||
            (p->starts_loc = alloc_n("local starts", i32, 1, &p->B)) == NULL)
            rc = MATTN_ERR_NOMEM;
    } else if (rc == MATTN_OK) {
        mattn_split(p->S, P, rank, &p->off_loc, &p->S_loc);
        if ((p->k_loc = alloc_n("local keys", f32, 4,
                                (const int64_t[]){p->B, p->S_loc, p->Hkv, p->D})) == NULL ||
            (p->v_loc = alloc_n("local values", f32, 4,
                                (const int64_t[]){p->B, p->S_loc, p->Hkv, p->Dv})) == NULL)
            rc = MATTN_ERR_NOMEM;
    }
    int64_t T = p->T, Hq = p->Hq;
    const int64_t rows[2] = {T, Hq};
    if (rc == MATTN_OK &&
        ((p->o = alloc_n("the output o", f32, 3, (const int64_t[]){T, Hq, p->Dv})) == NULL ||
         (p->want_lse && (p->lse = alloc_n("lse", f32, 2, rows)) == NULL) ||
         (p->want_m && (p->m = alloc_n("m", f32, 2, rows)) == NULL) ||
         (p->want_l && (p->l = alloc_n("l", f32, 2, rows)) == NULL)))
        rc = MATTN_ERR_NOMEM;
    /* Outputs start as NaN: an element the kernel never wrote cannot pass. */
    for (int64_t x = 0; rc == MATTN_OK && x < T * Hq * p->Dv; x++)
        p->o[x] = NAN;
    if (P == 1)
        return rc;

    /* Rank 0 stages the other ranks' pages in one set of buffers sized for
     * the largest part, allocated before the agreement, so that once data
     * moves nothing can stop half-way (a receiver would wait forever). */
    float *sk = NULL, *sv = NULL;
    int32_t *stab = NULL, *slen = NULL, *sstart = NULL;
    int64_t big_np = 1, big_mp = 1;
    if (rc == MATTN_OK && paged && rank == 0) {
        for (int r = 1; r < P; r++) {
            int64_t np, mp;
            paged_part(p, P, r, &np, &mp);
            big_np = np > big_np ? np : big_np, big_mp = mp > big_mp ? mp : big_mp;
        }
        if ((sk = alloc_n("staged keys", f32, 4,
                          (const int64_t[]){big_np, p->ps, p->Hkv, p->D})) == NULL ||
            (sv = alloc_n("staged values", f32, 4,
                          (const int64_t[]){big_np, p->ps, p->Hkv, p->Dv})) == NULL ||
            (stab = alloc_n("a page table", i32, 2, (const int64_t[]){p->B, big_mp})) == NULL ||
            (slen = alloc_n("lengths", i32, 1, &p->B)) == NULL ||
            (sstart = alloc_n("starts", i32, 1, &p->B)) == NULL)
            rc = MATTN_ERR_NOMEM;
    }
    if (mattn__cli_agree_max(comm, rc != MATTN_OK) != 0) {
        if (rc == MATTN_OK)
            rc = mattn__fail(MATTN_ERR_NOMEM, "another rank ran out of memory");
        goto done;
    }

    if (!paged) {
        /* The keys split over sp by mattn_split: the library's scatter. */
        mattn_dist_shape shape = {.batch = p->B, .q_len = 1, .kv_len = p->S, .q_heads = p->Hq,
                                  .kv_heads = p->Hkv, .layout = MATTN_SEQ_CONTIGUOUS};
        mattn_tensor kg = mattn_tensor_bthd(p->k, p->B, p->S, p->Hkv, p->D);
        mattn_tensor vg = mattn_tensor_bthd(p->v, p->B, p->S, p->Hkv, p->Dv);
        mattn_tensor kl = mattn_tensor_bthd(p->k_loc, p->B, p->S_loc, p->Hkv, p->D);
        mattn_tensor vl = mattn_tensor_bthd(p->v_loc, p->B, p->S_loc, p->Hkv, p->Dv);
        if ((rc = mattn_mesh_scatter(mesh, &shape, MATTN_SHARD_KV, 0, rank ? NULL : &kg, &kl)) ==
            MATTN_OK)
            rc = mattn_mesh_scatter(mesh, &shape, MATTN_SHARD_KV, 0, rank ? NULL : &vg, &vl);
        goto done; /* the scatter agrees on its status itself */
    }
    /* Pages: rank 0 repacks and sends each rank's part (it validated the
     * table, so every page it reads exists), then packs its own. */
    if (rank != 0) {
        int64_t np = p->npages_loc;
        if ((rc = recv_big(p->table_loc, p->B * p->mp_loc, MPI_INT32_T, 4, comm)) ||
            (rc = recv_big(p->lens_loc, p->B, MPI_INT32_T, 4, comm)) ||
            (rc = recv_big(p->starts_loc, p->B, MPI_INT32_T, 4, comm)) ||
            (rc = recv_big(p->k_loc, np * p->ps * p->Hkv * p->D, MPI_FLOAT, 4, comm)) ||
            (rc = recv_big(p->v_loc, np * p->ps * p->Hkv * p->Dv, MPI_FLOAT, 4, comm)))
            goto done;
    } else {
        for (int r = 1; r < P && rc == MATTN_OK; r++) {
            int64_t np, mp;
            paged_part(p, P, r, &np, &mp);
            paged_pack(p, P, r, mp, sk, sv, stab, slen, sstart);
            if ((rc = send_big(stab, p->B * mp, MPI_INT32_T, 4, r, comm)) ||
                (rc = send_big(slen, p->B, MPI_INT32_T, 4, r, comm)) ||
                (rc = send_big(sstart, p->B, MPI_INT32_T, 4, r, comm)) ||
                (rc = send_big(sk, np * p->ps * p->Hkv * p->D, MPI_FLOAT, 4, r, comm)))
                break;
            rc = send_big(sv, np * p->ps * p->Hkv * p->Dv, MPI_FLOAT, 4, r, comm);
        }
        paged_pack(p, P, 0, p->mp_loc, p->k_loc, p->v_loc, p->table_loc, p->lens_loc,
                   p->starts_loc);
    }
done:
    free(sk), free(sv), free(stab), free(slen), free(sstart);
    /* whatever failed on one rank (a receive, a send) fails on all */
    if (mattn__cli_agree_max(comm, rc != MATTN_OK) != 0 && rc == MATTN_OK)
        rc = mattn__fail(MATTN_ERR_MPI, "distributing the cache failed on another rank");
    return rc;
}

/* ------------------------------------------------------------------ compute */

static int call_once(const mattn_mesh *mesh, int P, dec_problem *p, const mattn_options *base)
{
    mattn_options o = *base;
    o.sinks = p->sinks;
    mattn_tensor q = mattn_tensor_bthd(p->q, p->op == OP_PAGED ? 1 : p->B,
                                       p->op == OP_PAGED ? p->T : 1, p->Hq, p->D);
    mattn_tensor out = mattn_tensor_bthd(p->o, q.batch, q.seq, p->Hq, p->Dv);
    if (p->op == OP_PAGED) {
        mattn_paged_kv kv = {
            .k_pages = mattn_tensor_bthd(p->k_loc, p->npages_loc ? p->npages_loc : 1, p->ps,
                                         p->Hkv, p->D),
            .v_pages = mattn_tensor_bthd(p->v_loc, p->npages_loc ? p->npages_loc : 1, p->ps,
                                         p->Hkv, p->Dv),
            .page_table = p->table_loc, .num_seqs = p->B, .max_pages = p->mp_loc,
            .kv_lens = P > 1 ? p->lens_loc : p->ends,
            .kv_starts = P > 1 ? p->starts_loc : NULL, .kv_totals = P > 1 ? p->ends : NULL};
        return P > 1 ? mattn_paged_forward_mesh(mesh, &q, &kv, p->cu, &out, p->lse, &o)
                     : mattn_paged_forward(&q, &kv, p->cu, &out, p->lse, &o);
    }
    mattn_tensor k = mattn_tensor_bthd(p->k_loc, p->B, p->S_loc, p->Hkv, p->D);
    mattn_tensor v = mattn_tensor_bthd(p->v_loc, p->B, p->S_loc, p->Hkv, p->Dv);
    o.kv_offset = p->off_loc;
    if (p->op == OP_AR)
        return P > 1 ? mattn_ar_decode_mesh(mesh, &q, &k, &v, p->starts, p->ends, &out, p->lse,
                                            &o)
                     : mattn_ar_decode(&q, &k, &v, p->starts, p->ends, &out, p->lse, &o);
    return P > 1 ? mattn_ragged_decode_mesh(mesh, &q, &k, &v, p->starts, p->ends, &out, p->m,
                                            p->l, p->lse, &o)
                 : mattn_ragged_decode(&q, &k, &v, p->starts, p->ends, &out, p->m, p->l, p->lse,
                                       &o);
}

/* Warm-up and timed calls; every rank makes the same calls (the mesh
 * operators agree on the status, so all ranks stop together). */
static int dec_compute(const dec_config *c, MPI_Comm comm, const mattn_mesh *mesh,
                       dec_problem *p, double *best, double *median)
{
    int rank = 0, P = 1, rc = MATTN_OK;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    mattn_options o = dec_options(c, p);
    double *times = alloc_n("timings", sizeof(double), 1, &c->repeat);
    if (mattn__cli_agree_max(comm, times == NULL) != 0) {
        free(times);
        return mattn__fail(MATTN_ERR_NOMEM, "out of memory for timings");
    }
    for (int64_t x = 0; x < c->warmup + c->repeat && rc == MATTN_OK; x++) {
        if (P > 1)
            MPI_Barrier(comm);
        double t0 = mattn__cli_now();
        rc = call_once(mesh, P, p, &o);
        double dt = mattn__cli_now() - t0;
        int warm = x < c->warmup;
        if (!warm)
            times[x - c->warmup] = dt;
        if (rc == MATTN_OK && !c->quiet && rank == 0)
            fprintf(mattn__cli_err(), "mattn decode: %s %" PRId64 "/%" PRId64 ": %.4f s\n",
                    warm ? "warm-up" : "run", warm ? x + 1 : x - c->warmup + 1,
                    warm ? c->warmup : c->repeat, dt);
    }
    if (rc == MATTN_OK) {
        qsort(times, (size_t)c->repeat, sizeof *times, mattn__cli_cmp_double);
        int64_t n = c->repeat;
        *best = times[0];
        *median = n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
    }
    free(times);
    return rc;
}

/* Bytes of K/V the kernel reads: per sequence, the union of its query rows'
 * allowed key ranges (window and chunk applied), 4 Hkv (D + Dv) per key. */
static int64_t kv_bytes(const dec_config *c, const dec_problem *p)
{
    int64_t keys = 0;
    for (int64_t s = 0; s < p->B; s++) {
        int64_t qn = p->op == OP_PAGED ? p->cu[s + 1] - p->cu[s] : 1;
        int64_t lo0 = p->starts ? p->starts[s] : 0, hi0 = p->ends[s], lo = INT64_MAX, hi = 0;
        for (int64_t i = 0; i < qn; i++) {
            int64_t qp = hi0 - qn + i, a = lo0, b = qp + 1 < hi0 ? qp + 1 : hi0;
            if (c->window[0] >= 0 && qp - c->window[0] > a)
                a = qp - c->window[0];
            if (c->chunk > 0) {
                int64_t c0 = qp / c->chunk * c->chunk; /* qp >= 0 here */
                a = c0 > a ? c0 : a;
                b = c0 + c->chunk < b ? c0 + c->chunk : b;
            }
            if (a < b)
                lo = a < lo ? a : lo, hi = b > hi ? b : hi;
        }
        if (lo < hi)
            keys += hi - lo;
    }
    return keys * 4 * p->Hkv * (p->D + p->Dv);
}

/* ------------------------------------------------------------------ check, output */

static int dec_check(const dec_config *c, const dec_problem *p, int P, mattn__dref_report *r)
{
    const int paged = p->op == OP_PAGED;
    mattn__dref_problem d = {
        .nseq = p->B, .T = p->T, .Hq = p->Hq, .Hkv = p->Hkv, .D = p->D, .Dv = p->Dv,
        .q = p->q, .k = p->k, .v = p->v, .S = p->S, .page_size = paged ? p->ps : 0,
        .max_pages = p->mp, .table = p->table, .cu = paged ? p->cu : NULL,
        .lo = p->starts, .hi = p->ends,
        .scale = c->scale != 0.0 ? (double)(float)c->scale
                                 : (double)(float)(1.0 / sqrt((double)p->D)),
        .softcap = (double)(float)c->softcap, .window_left = c->window[0],
        .window_right = c->window[1], .chunk = c->chunk, .sinks = p->sinks,
        .piece = c->block_kv > 0 ? c->block_kv : 2048, .ranks = P,
        .o = p->o, .lse = p->lse, .m = p->m, .l = p->l,
        .st = paged ? 1 : p->Hq, .sh = paged ? p->T : 1};
    return mattn__dref_check(&d, c->check_rows, r);
}

typedef struct dec_outputs {
    mattn__npy_writer w[4]; /* out, lse, m, l */
    const char *path[4];
} dec_outputs;

static int dec_open(const dec_config *c, dec_outputs *w)
{
    w->path[0] = c->out, w->path[1] = c->lse, w->path[2] = c->m, w->path[3] = c->l;
    for (int x = 0; x < 4; x++)
        if (w->path[x]) {
            int rc = mattn__npy_writer_open(&w->w[x], w->path[x]);
            if (rc)
                return rc;
        }
    return MATTN_OK;
}

static int dec_write(const dec_problem *p, dec_outputs *w)
{
    int rc = MATTN_OK;
    const int paged = p->op == OP_PAGED;
    int64_t o3[3] = {p->T, p->Hq, p->Dv}, o4[4] = {paged ? 1 : p->T, paged ? p->T : 1, p->Hq, p->Dv};
    int64_t st[2] = {paged ? p->Hq : p->B, paged ? p->T : p->Hq};
    const float *data[4] = {p->o, p->lse, p->m, p->l};
    for (int x = 0; x < 4 && rc == MATTN_OK; x++)
        if (w->path[x])
            rc = x == 0 ? mattn__npy_writer_put(&w->w[0], MATTN__NPY_F32, (int)p->q_ndim,
                                                p->q_ndim == 4 ? o4 : o3, p->o)
                        : mattn__npy_writer_put(&w->w[x], MATTN__NPY_F32, 2, st, data[x]);
    for (int x = 0; rc == MATTN_OK && x < 4; x++)
        if (w->path[x] && (rc = mattn__npy_writer_commit(&w->w[x])))
            for (int y = 0; y < x; y++)
                if (w->path[y])
                    unlink(w->path[y]);
    return rc;
}

static void dec_print(const dec_config *c, const dec_problem *p, int P, double best,
                      double median, const mattn__dref_report *r)
{
    FILE *out = mattn__cli_out();
    int64_t bytes = kv_bytes(c, p);
    fprintf(out, "op: %s\n", OP_NAMES[p->op]);
    fprintf(out, "inputs: %s\n", c->synthetic ? "synthetic" : "files");
    fprintf(out, "sequences: %" PRId64 "\nqueries: %" PRId64 "\n", p->B, p->T);
    fprintf(out, "heads: %" PRId64 "\nkv_heads: %" PRId64 "\n", p->Hq, p->Hkv);
    fprintf(out, "dim: %" PRId64 "\ndv: %" PRId64 "\n", p->D, p->Dv);
    if (p->op == OP_PAGED)
        fprintf(out, "num_pages: %" PRId64 "\npage_size: %" PRId64 "\nmax_pages: %" PRId64 "\n",
                p->npages, p->ps, p->mp);
    else
        fprintf(out, "cache_len: %" PRId64 "\n", p->S);
    fprintf(out, "threads: %d\nranks: %d\n", mattn__resolve_threads((int)c->threads), P);
    fprintf(out, "kv_bytes: %" PRId64 "\n", bytes);
    fprintf(out, "warmup: %" PRId64 "\nrepeat: %" PRId64 "\n", c->warmup, c->repeat);
    fprintf(out, "time_best_s: %.6f\ntime_median_s: %.6f\n", best, median);
    fprintf(out, "tokens_per_s: %.1f\n", median > 0 ? (double)p->T / median : 0.0);
    fprintf(out, "gbps: %.3f\n", median > 0 ? (double)bytes / median * 1e-9 : 0.0);
    fprintf(out, "gbps_best: %.3f\n", best > 0 ? (double)bytes / best * 1e-9 : 0.0);
    if (r) {
        fprintf(out, "check_rows: %" PRId64 "\n", r->rows);
        fprintf(out, "max_abs_err_o: %.9g\n", r->max_err_o);
        fprintf(out, "max_abs_err_lse: %.9g\n", r->max_err_lse);
        if (p->m)
            fprintf(out, "max_abs_err_m: %.9g\n", r->max_err_m);
        if (p->l)
            fprintf(out, "max_abs_err_l: %.9g\n", r->max_err_l);
        fprintf(out, "max_err_over_bound: %.9g\n", r->max_ratio);
        fprintf(out, "check: %s\n", r->max_ratio <= 1.0 ? "pass" : "fail");
    }
}

/* ------------------------------------------------------------------ command */

static int dec_run(const dec_config *c, MPI_Comm comm)
{
    int rank = 0, P = 1, code = MATTN__CLI_EXIT_OK;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    dec_problem p;
    dec_outputs w;
    mattn_mesh *mesh = NULL;
    double best = 0, median = 0;
    mattn__dref_report r;
    memset(&p, 0, sizeof p);
    memset(&w, 0, sizeof w);
    for (int x = 0; x < 4; x++)
        w.w[x].fd = -1;

    int rc = MATTN_OK, reported = 0;
    if (rank == 0) {
        rc = dec_load(c, &p);
        if (rc == MATTN_OK)
            rc = dec_open(c, &w); /* a bad output path fails before the compute */
        if (rc != MATTN_OK)
            reported = 1, mattn__cli_report("decode", rc);
    }
    if (P > 1) { /* the same status on every rank */
        int mrc = mattn_mesh_create(comm, 1, 1, P, &mesh);
        if (rc == MATTN_OK)
            rc = mrc;
    }
    /* rank 0's load status reaches every rank with the sizes; after that
     * every step ends with the same status on every rank */
    rc = dec_share(comm, rc, &p, mesh);
    if (rc == MATTN_OK)
        rc = dec_compute(c, comm, mesh, &p, &best, &median);
    if (rc != MATTN_OK && rank == 0 && !reported)
        mattn__cli_report("decode", rc);
    if (rc != MATTN_OK)
        code = MATTN__CLI_EXIT_RUNTIME;
    if (rank == 0 && code == MATTN__CLI_EXIT_OK) {
        if (c->check) {
            if (!c->quiet)
                fprintf(mattn__cli_err(), "mattn decode: check: float64 reference\n");
            rc = dec_check(c, &p, P, &r);
        }
        if (rc == MATTN_OK)
            dec_print(c, &p, P, best, median, c->check ? &r : NULL);
        if (rc != MATTN_OK) {
            code = mattn__cli_report("decode", rc);
        } else if (c->check && !(r.max_ratio <= 1.0)) {
            fprintf(mattn__cli_err(), "mattn decode: check failed: an error is %.3g times its "
                    "fp32 bound (worst at query %" PRId64 ", head %" PRId64 "); no output "
                    "written\n", r.max_ratio, r.worst_t, r.worst_h);
            code = MATTN__CLI_EXIT_RUNTIME;
        } else if ((rc = dec_write(&p, &w))) {
            code = mattn__cli_report("decode", rc);
        } else {
            const char *names[4] = {"out", "lse", "m", "l"};
            for (int x = 0; x < 4; x++)
                if (w.path[x])
                    fprintf(mattn__cli_out(), "%s: %s\n", names[x], w.path[x]);
        }
    }
    for (int x = 0; x < 4; x++)
        mattn__npy_writer_abort(&w.w[x]); /* temporaries only; nothing after a commit */
    dec_free(&p);
    mattn_mesh_free(mesh);
    if (rank == 0) {
        fflush(mattn__cli_out());
        fflush(mattn__cli_err());
    }
    return mattn__cli_root_code(comm, code);
}

int mattn__cli_decode(MPI_Comm comm, int argc, char **argv)
{
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    dec_config c;
    int code = dec_parse(&c, argc, argv, rank == 0 ? mattn__cli_err() : NULL);
    code = mattn__cli_agree_parse(comm, code, print_help);
    if (code != MATTN__CLI_EXIT_OK)
        return code == MATTN__CLI_HELP ? MATTN__CLI_EXIT_OK : code;
    return dec_run(&c, comm);
}
