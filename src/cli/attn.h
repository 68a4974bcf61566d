/* What `mattn run` and `mattn grad` share: the attention options (one config
 * struct and the option-table entries that fill it), the problem rank 0
 * loads from .npy files or makes up, and its distribution over a mesh.
 *
 * The flow of both commands, every step collective over the communicator:
 *   mattn__attn_load     rank 0 reads the files (or sizes a synthetic
 *                        problem); every rank gets the sizes and the global
 *                        arguments (sinks, mask, bias) of the mesh API;
 *   mattn__attn_place    the mesh (--mesh, or the default for the operator),
 *                        this rank's shard, its local q/k/v and segment ids
 *                        (scattered from rank 0, or generated in place);
 *   ... the command computes on the local tensors, gathers to rank 0 ...
 * A single-rank job without --mesh and without --op ring has no mesh: the
 * local tensors are then the global ones and the single-rank operators run.
 * Every step returns the same status on every rank (mattn__attn_agree). */
#ifndef MATTN_CLI_ATTN_H
#define MATTN_CLI_ATTN_H

#include <float.h>
#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "cli/args.h"
#include "cli/npy.h"
#include "mattn.h"

/* --op, in the order of the CHOICE words. */
enum { MATTN__OP_VANILLA, MATTN__OP_SDPA, MATTN__OP_FLASH, MATTN__OP_SPLASH, MATTN__OP_RING };
#define MATTN__OP_WORDS "vanilla|sdpa|flash|splash|ring"
extern const char *const mattn__op_names[];
/* The library operator of each --op. */
extern const mattn_op mattn__op_mesh[];
/* --layout, --seq-layout, --comm, --mask-kind. */
enum { MATTN__LAYOUT_BTHD, MATTN__LAYOUT_BHTD };
enum { /* -1: --mask-kind not given, the mask is what the options say */
    MATTN__MASK_CAUSAL,
    MATTN__MASK_LOCAL,
    MATTN__MASK_CHUNKED,
    MATTN__MASK_FULL,
    MATTN__MASK_DENSE
};

typedef struct mattn__attn_config {
    int op, layout, seq_layout, comm, mask_kind;
    const char *mesh; /* "DP,TP,SP" */
    const char *q, *k, *v;
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
    /* run: outputs (lse is an output); grad: o and lse are inputs */
    const char *out, *lse, *weights, *o;
    /* grad */
    const char *dout, *dq, *dk, *dv_out, *dsinks, *dbias;
    /* resolved */
    int mesh_dims[3]; /* 0,0,0 when --mesh is not given */
} mattn__attn_config;

/* Option-table entries (cli/args.h) over mattn__attn_config. */
#define MATTN__AOFF(field) offsetof(mattn__attn_config, field)
#define MATTN__A_SECTION(title) {.kind = MATTN__OPT_SECTION, .name = title}
#define MATTN__A_FLAG(n, f, h) \
    {.kind = MATTN__OPT_FLAG, .name = n, .offset = MATTN__AOFF(f), .help = h}
#define MATTN__A_FILE(n, f, h) \
    {.kind = MATTN__OPT_STRING, .name = n, .offset = MATTN__AOFF(f), .metavar = "FILE", .help = h}
#define MATTN__A_INT(n, f, meta, lo, hi, h)                                                  \
    {.kind = MATTN__OPT_INT, .name = n, .offset = MATTN__AOFF(f), .metavar = meta, .help = h, \
     .imin = lo, .imax = hi}
#define MATTN__A_CHOICE(n, f, words, h) \
    {.kind = MATTN__OPT_CHOICE, .name = n, .offset = MATTN__AOFF(f), .choices = words, .help = h}

/* Bounds the library enforces (src/core/problem.c), checked while parsing so
 * a bad value is a usage error before any file is read. */
#define MATTN__POS_MAX ((int64_t)1 << 60)

/* The options of the problem itself (inputs, masking, logits, execution,
 * distribution, synthetic sizes), in help order. A command's table is its
 * own entries around this list. */
#define MATTN__ATTN_INPUT_OPTS                                                                 \
    MATTN__A_FILE("q", q, "queries [B,T,Hq,D] (bthd) or [B,Hq,T,D] (bhtd), float32/float64; "  \
                          "give --q --k --v together, or none for a synthetic problem"),       \
    MATTN__A_FILE("k", k, "keys [B,S,Hkv,D] or [B,Hkv,S,D]; query head h reads kv head "       \
                          "h/(Hq/Hkv)"),                                                       \
    MATTN__A_FILE("v", v, "values [B,S,Hkv,Dv] or [B,Hkv,S,Dv]; Dv may differ from D"),         \
    MATTN__A_CHOICE("layout", layout, "bthd|bhtd",                                             \
                    "how the q/k/v-shaped files are laid out: bthd = [B,T,H,D] as JAX "         \
                    "(default), bhtd = [B,H,T,D] as PyTorch")

#define MATTN__ATTN_MASK_OPTS                                                                  \
    MATTN__A_SECTION("which keys a query sees (SPEC 3: row i is at qp = q_offset+i, key j at " \
                     "kp = kv_offset+j)"),                                                     \
    MATTN__A_FLAG("causal", causal, "allow key j only if kp <= qp: top-left aligned; "         \
                                    "--q-offset S-T aligns bottom-right (default off)"),       \
    {.kind = MATTN__OPT_PAIR, .name = "window", .offset = MATTN__AOFF(window),                 \
     .metavar = "L,R", .imin = -1, .imax = MATTN__POS_MAX,                                     \
     .help = "allow qp-L <= kp <= qp+R, inclusive on both sides; -1 = that side unbounded "    \
             "(default -1,-1: off)"},                                                          \
    MATTN__A_INT("chunk", chunk, "C", 0, MATTN__POS_MAX,                                       \
                 "allow only keys of the query's chunk: floor(qp/C) == floor(kp/C) "           \
                 "(default 0: off)"),                                                          \
    MATTN__A_INT("q-offset", q_offset, "N", -MATTN__POS_MAX, MATTN__POS_MAX,                   \
                 "absolute position of query row 0 (default 0)"),                              \
    MATTN__A_INT("kv-offset", kv_offset, "N", -MATTN__POS_MAX, MATTN__POS_MAX,                 \
                 "absolute position of key 0 (default 0)"),                                    \
    MATTN__A_FILE("q-segments", q_seg, "query segment ids [B,T], int32/int64: allowed iff "    \
                                       "the ids are equal and >= 0 (negative = padding); "     \
                                       "needs --kv-segments"),                                 \
    MATTN__A_FILE("kv-segments", kv_seg, "key segment ids [B,S], int32/int64; needs "          \
                                         "--q-segments"),                                      \
    MATTN__A_FILE("mask", mask, "bool/uint8, nonzero = allowed, broadcast as NumPy does: "     \
                                "[T,S], [Hq|1,T,S] or [B|1,Hq|1,T,S] (default none)"),        \
    MATTN__A_CHOICE("mask-kind", mask_kind, "causal|local|chunked|full|dense",                 \
                    "--op splash: the mask object: causal (= --causal), local (the --window "  \
                    "L,R), chunked (causal within chunks of --chunk C), full (every key), "    \
                    "dense (the --mask file) (default: built from the options above)")

#define MATTN__ATTN_LOGIT_OPTS                                                                 \
    MATTN__A_SECTION("logits and softmax (SPEC 4)"),                                           \
    {.kind = MATTN__OPT_FLOAT, .name = "scale", .offset = MATTN__AOFF(scale), .metavar = "X",  \
     .fmin = -FLT_MAX, .fmax = FLT_MAX, .flags = MATTN__OPT_NONZERO,                           \
     .help = "logit s = X * dot(q_i, k_j); finite and nonzero (default 1/sqrt(D))"},           \
    {.kind = MATTN__OPT_FLOAT, .name = "softcap", .offset = MATTN__AOFF(softcap),              \
     .metavar = "X", .fmin = 0.0, .fmax = FLT_MAX,                                             \
     .help = "when X > 0, s = X * tanh(s / X), before the bias (default 0: off)"},             \
    MATTN__A_FILE("bias", bias, "additive logit bias after the cap, float32/float64, shaped "  \
                                "like --mask (default none)"),                                 \
    MATTN__A_FILE("sinks", sinks, "one extra logit per head [Hq], float32/float64: counted "   \
                                  "in the softmax denominator, adds no value (default none)"), \
    {.kind = MATTN__OPT_FLOAT, .name = "dropout", .offset = MATTN__AOFF(dropout),              \
     .metavar = "P", .fmin = 0.0, .fmax = 1.0, .flags = MATTN__OPT_BELOW_MAX,                  \
     .help = "drop weight (i,j) when u(seed,b,h,qp,kp) < P after normalisation, scale kept "   \
             "ones by 1/(1-P); P in [0,1); lse unaffected (default 0)"},                       \
    {.kind = MATTN__OPT_U64, .name = "seed", .offset = MATTN__AOFF(seed), .metavar = "N",      \
     .help = "dropout seed; also seeds the synthetic inputs (default 0)"}

#define MATTN__ATTN_EXEC_OPTS                                                                  \
    MATTN__A_SECTION("execution"),                                                             \
    MATTN__A_INT("threads", threads, "N", 0, 4096,                                             \
                 "worker threads per rank, 0 = all usable CPUs (default 1)"),                  \
    MATTN__A_INT("block-q", block_q, "N", 0, 65536,                                            \
                 "flash/splash query block rows, 0 = tuned default (default 0); not with "     \
                 "--op vanilla"),                                                              \
    MATTN__A_INT("block-kv", block_kv, "N", 0, 65536,                                          \
                 "flash/splash key block rows, 0 = tuned default (default 0); not with "       \
                 "--op vanilla"),                                                              \
    MATTN__A_INT("warmup", warmup, "N", 0, 1000000,                                            \
                 "untimed runs before the timed ones (default 1 synthetic, 0 with files)"),   \
    MATTN__A_INT("repeat", repeat, "N", 1, 1000000,                                            \
                 "timed runs; best and median times are reported (default 3 synthetic, 1 "    \
                 "with files)"),                                                               \
    MATTN__A_FLAG("quiet", quiet, "no progress lines on stderr (errors are still printed)"),   \
                                                                                               \
    MATTN__A_SECTION("distribution (under mpirun; SPEC 7, docs/distributed.md)"),              \
    {.kind = MATTN__OPT_STRING, .name = "mesh", .offset = MATTN__AOFF(mesh),                   \
     .metavar = "DP,TP,SP",                                                                    \
     .help = "ranks as dp (batch) x tp (kv-head groups) x sp (sequence), product = the "       \
             "number of ranks; sp > 1 needs --op ring (default: 1,1,P for ring, else "        \
             "dp = gcd(P,B), tp = P/dp)"},                                                     \
    MATTN__A_CHOICE("seq-layout", seq_layout, "contiguous|zigzag",                             \
                    "how sp cuts both sequences: one run per rank, or chunks r and 2sp-1-r "   \
                    "of 2sp, which balances causal work (default contiguous)"),               \
    MATTN__A_CHOICE("comm", comm, "overlap|sendrecv",                                          \
                    "ring K/V transport: non-blocking transfers overlapped with compute, or "  \
                    "one blocking MPI_Sendrecv per step (default overlap)")

#define MATTN__ATTN_SYNTH_OPTS                                                                 \
    MATTN__A_SECTION("synthetic problem (without --q/--k/--v; q, k, v uniform in (-1, 1))"),   \
    MATTN__A_INT("batch", batch, "N", 0, (int64_t)1 << 20, "B (default 1)"),                   \
    MATTN__A_INT("seq", seq, "N", 0, (int64_t)1 << 31, "T, query rows (default 2048)"),         \
    MATTN__A_INT("kv-seq", kv_seq, "N", 0, (int64_t)1 << 31, "S, keys (default: --seq)"),       \
    MATTN__A_INT("heads", heads, "N", 1, 65536, "Hq, query heads (default 16)"),                \
    MATTN__A_INT("kv-heads", kv_heads, "N", 1, 65536,                                          \
                 "Hkv, key/value heads, must divide --heads (default: --heads, i.e. MHA)"),    \
    MATTN__A_INT("dim", dim, "N", 1, 65536, "D, query/key head dim (default 128)")

/* `mattn run` only: in `mattn grad`, --dv names the dv output file (a
 * synthetic grad problem has Dv = D). */
#define MATTN__ATTN_SYNTH_DV_OPT \
    MATTN__A_INT("dv", dv, "N", 1, 65536, "Dv, value head dim (default: --dim)")

#define MATTN__ATTN_CHECK_ROWS_OPT                                                             \
    MATTN__A_INT("check-rows", check_rows, "N", 0, (int64_t)1 << 62,                           \
                 "with --check: compare N evenly spaced rows only (default 0: all rows)")

/* Defaults of every field (before parsing). */
void mattn__attn_config_init(mattn__attn_config *c);
/* Checks across the shared options after parsing; `size` is the number of
 * ranks. Prints "mattn <cmd>: ..." to err (if not NULL) and returns an exit
 * status (MATTN__CLI_EXIT_USAGE on error). */
int mattn__attn_validate(const char *cmd, mattn__attn_config *c, const mattn__opt *opts,
                         size_t n, const unsigned char *given, int size, FILE *err);

/* ------------------------------------------------------------------ problem */

/* The global problem. Sizes and the global arguments (sinks, mask, bias)
 * are on every rank; q/k/v and the segment ids only on rank 0 (q/k/v not
 * at all in a synthetic problem unless rank 0 asks for them with
 * mattn__attn_materialise). */
typedef struct mattn__attn_problem {
    int64_t B, T, S, Hq, Hkv, D, Dv;
    int64_t mask_b, mask_h, bias_b, bias_h;
    mattn__npy_array q, k, v;
    mattn__npy_array sinks, q_seg, kv_seg, mask, bias;
    mattn_tensor tq, tk, tv; /* views in the file layout (rank 0) */
    mattn_options opts;      /* the global options (segment ids: rank 0 only) */
} mattn__attn_problem;

/* Collective. Zeroes p first, so mattn__attn_problem_free is always safe. */
int mattn__attn_load(MPI_Comm comm, const mattn__attn_config *c, mattn__attn_problem *p);
/* Rank 0 of a synthetic problem: fills q, k, v globally (for --check). */
int mattn__attn_materialise(const mattn__attn_config *c, mattn__attn_problem *p);
void mattn__attn_problem_free(mattn__attn_problem *p);

/* Reads an optional q/k/v-shaped float input (path NULL: nothing) with
 * [B, L, H, Dm] in the file layout; role names it in messages. Rank 0. */
int mattn__attn_load_like(const mattn__attn_config *c, const char *path, const char *role,
                          int64_t B, int64_t L, int64_t H, int64_t Dm, mattn__npy_array *a);

/* A view of data laid out as the files are ([B,L,H,Dm] or [B,H,L,Dm]). */
mattn_tensor mattn__attn_view(const mattn__attn_config *c, const float *data, int64_t B,
                              int64_t L, int64_t H, int64_t Dm);

/* A synthetic tensor's elements in the file layout: element `index` of
 * stream `stream` (1 q, 2 k, 3 v, 4 do) is the same on every rank. */
float mattn__attn_synth(const mattn__attn_config *c, uint64_t stream, int64_t index);

/* ------------------------------------------------------------------ placement */

/* This rank's part: with a mesh, local shards (BTHD, contiguous) and the
 * options that go with them; without one, views of the global problem. */
typedef struct mattn__attn_local {
    mattn_mesh *mesh; /* NULL: single-rank call on the global problem */
    int dims[3];      /* dp, tp, sp */
    mattn_dist_shape shape;
    mattn_shard shard;
    float *q, *k, *v; /* owned (mesh only) */
    int32_t *q_seg, *kv_seg;
    mattn_tensor tq, tk, tv;
    mattn_options opts; /* for the call: local segment ids, global the rest */
} mattn__attn_local;

/* 1 if the command runs on a mesh (several ranks, --mesh, or --op ring). */
int mattn__attn_uses_mesh(const mattn__attn_config *c, int size);

/* Collective. Zeroes l first. */
int mattn__attn_place(MPI_Comm comm, const mattn__attn_config *c, const mattn__attn_problem *p,
                      mattn__attn_local *l);
void mattn__attn_local_free(mattn__attn_local *l);

/* A local [B_l, L_l, H_l, Dm] BTHD buffer for a Q- or KV-role array
 * (mesh), zero-sized arrays included; NOMEM naming `what` on failure. */
int mattn__attn_alloc_local(const mattn__attn_local *l, mattn_shard_role role, int64_t Dm,
                            const char *what, float **data, mattn_tensor *t);
/* Scatters a global q/k/v-shaped tensor (rank 0; file layout) into a local
 * one (mesh), or fills it from a synthetic stream when global is NULL. */
int mattn__attn_distribute(const mattn__attn_config *c, const mattn__attn_local *l,
                           mattn_shard_role role, const mattn_tensor *global, uint64_t stream,
                           const mattn_tensor *local);

/* (query, key) pairs of this rank's shard that causal/window/chunk allow
 * (times its batch entries and q heads); the global count without a mesh. */
double mattn__attn_local_pairs(const mattn__attn_problem *p, const mattn__attn_local *l);

/* ------------------------------------------------------------------ splash */

/* Single-rank splash: the mask object for the call and the options to call
 * with (the structural predicates moved into the mask, so FULL blocks do
 * no element-wise work). *mask is freed by the caller. */
int mattn__attn_splash_mask(const mattn__attn_problem *p, const mattn_options *opts,
                            mattn_options *call, mattn_splash_mask **mask);

/* ------------------------------------------------------------------ status */

/* Collective: every rank gets the status of the lowest-numbered failing rank
 * (MATTN_OK if none), with its message as mattn_last_error() ("rank r: ..."
 * for r > 0), so rank 0 can print it. */
int mattn__attn_agree(MPI_Comm comm, int rc);

/* ------------------------------------------------------------------ sizes */

/* *n = the product of the k sizes dims[] of a buffer of `size`-byte
 * elements, or MATTN_ERR_NOMEM "<what> [dims] is too large" when its bytes
 * overflow (as NumPy: the nonzero sizes must fit even if another is 0).
 * Sizes come from the user, so every buffer they shape is counted here. */
int mattn__attn_count(const char *what, int k, const int64_t *dims, size_t size, int64_t *n);

/* *x = a [dims] buffer of floats (uninitialised), or MATTN_ERR_NOMEM naming
 * `what`: mattn__attn_alloc_floats(&o, "o", 3, (const int64_t[]){B, Hq, T}). */
int mattn__attn_alloc_floats(float **x, const char *what, int k, const int64_t *dims);

#endif
