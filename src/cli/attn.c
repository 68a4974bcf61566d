/* Shared by `mattn run` and `mattn grad`: option checks, loading, placement
 * on the mesh (see attn.h for the flow). */
#include "cli/attn.h"

#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/reference.h"
#include "core/status.h"

const char *const mattn__op_names[] = {"vanilla", "sdpa", "flash", "splash", "ring"};
const mattn_op mattn__op_mesh[] = {MATTN_OP_VANILLA, MATTN_OP_SDPA, MATTN_OP_FLASH,
                                   MATTN_OP_SPLASH, MATTN_OP_RING};

/* ------------------------------------------------------------------ options */

void mattn__attn_config_init(mattn__attn_config *c)
{
    memset(c, 0, sizeof *c);
    c->op = MATTN__OP_SDPA;
    c->layout = MATTN__LAYOUT_BTHD;
    c->seq_layout = MATTN_SEQ_CONTIGUOUS;
    c->comm = MATTN_RING_COMM_OVERLAP;
    c->mask_kind = -1;
    c->window[0] = c->window[1] = -1;
    c->threads = 1;
    c->batch = 1, c->seq = 2048, c->heads = 16, c->dim = 128;
}

static int usage(const char *cmd, FILE *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int usage(const char *cmd, FILE *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(err, "mattn %s: ", cmd);
        vfprintf(err, fmt, ap);
        fprintf(err, "\n(see 'mattn %s --help')\n", cmd);
        va_end(ap);
    }
    return MATTN__CLI_EXIT_USAGE;
}

/* "DP,TP,SP": three integers >= 1. */
static int parse_mesh(const char *s, int dims[3])
{
    const char *p = s;
    for (int x = 0; x < 3; x++) {
        char *end;
        if (*p < '0' || *p > '9')
            return 0;
        long v = strtol(p, &end, 10);
        if (v < 1 || v > 1 << 20 || *end != (x < 2 ? ',' : '\0'))
            return 0;
        dims[x] = (int)v;
        p = end + 1;
    }
    return 1;
}

static const char *const SYNTHETIC_ONLY[] = {"batch", "seq", "kv-seq", "heads",
                                              "kv-heads", "dim", "dv"};

/* Whether option `name` was given (int_only: only as an integer option, so
 * grad's --dv output file is not the synthetic --dv size). */
static int given_as(const mattn__opt *opts, size_t n, const unsigned char *given,
                    const char *name, int int_only)
{
    for (size_t i = 0; i < n; i++)
        if (opts[i].kind != MATTN__OPT_SECTION && strcmp(opts[i].name, name) == 0 &&
            (!int_only || opts[i].kind == MATTN__OPT_INT))
            return given[i];
    return 0;
}

int mattn__attn_validate(const char *cmd, mattn__attn_config *c, const mattn__opt *opts,
                         size_t n, const unsigned char *given, int size, FILE *err)
{
#define GIVEN(name) given_as(opts, n, given, name, 0)
    int files = (c->q != NULL) + (c->k != NULL) + (c->v != NULL);
    if (files != 0 && files != 3)
        return usage(cmd, err, "--q, --k and --v go together (or give none for a synthetic "
                               "problem)");
    c->synthetic = files == 0;
    for (size_t x = 0; !c->synthetic && x < sizeof SYNTHETIC_ONLY / sizeof *SYNTHETIC_ONLY; x++)
        if (given_as(opts, n, given, SYNTHETIC_ONLY[x], 1))
            return usage(cmd, err, "--%s describes a synthetic problem and cannot be combined "
                                   "with --q/--k/--v", SYNTHETIC_ONLY[x]);
    if ((c->q_seg != NULL) != (c->kv_seg != NULL))
        return usage(cmd, err, "--q-segments and --kv-segments go together");
    if ((GIVEN("block-q") || GIVEN("block-kv")) && c->op == MATTN__OP_VANILLA)
        return usage(cmd, err, "--block-q/--block-kv tune flash; --op vanilla has no blocks");
    if (GIVEN("check-rows") && !c->check)
        return usage(cmd, err, "--check-rows needs --check");
    /* The library takes float: a value may round to 1 (rejected) or to 0
     * (which would silently mean "default" or "off"). */
    if (GIVEN("scale") && (float)c->scale == 0.0f)
        return usage(cmd, err, "--scale: %g rounds to 0 in float32", c->scale);
    if (c->softcap != 0.0 && (float)c->softcap == 0.0f)
        return usage(cmd, err, "--softcap: %g rounds to 0 in float32", c->softcap);
    if ((float)c->dropout >= 1.0f)
        return usage(cmd, err, "--dropout: %.17g rounds to 1 in float32; P must be below 1",
                     c->dropout);

    /* --mask-kind names the splash mask object; each kind is a spelling of
     * options that every operator (and the reference) understands. */
    if (GIVEN("mask-kind")) {
        if (c->op != MATTN__OP_SPLASH)
            return usage(cmd, err, "--mask-kind describes splash's mask object; it needs "
                                   "--op splash (the other operators take --causal, --window, "
                                   "--chunk and --mask directly)");
        switch (c->mask_kind) {
        case MATTN__MASK_CAUSAL:
            c->causal = 1;
            break;
        case MATTN__MASK_LOCAL:
            if (c->window[0] == -1 && c->window[1] == -1)
                return usage(cmd, err, "--mask-kind local needs --window L,R");
            break;
        case MATTN__MASK_CHUNKED:
            if (c->chunk == 0)
                return usage(cmd, err, "--mask-kind chunked needs --chunk C");
            c->causal = 1; /* splash's chunked mask is causal within each chunk */
            break;
        case MATTN__MASK_FULL:
            if (c->causal || c->chunk || c->mask || c->window[0] != -1 || c->window[1] != -1)
                return usage(cmd, err, "--mask-kind full allows every key; it cannot be "
                                       "combined with --causal, --window, --chunk or --mask");
            break;
        case MATTN__MASK_DENSE:
            if (c->mask == NULL)
                return usage(cmd, err, "--mask-kind dense needs --mask M.npy");
            break;
        }
    }

    /* Distribution. Every rank sees the same argv and size, so every rank
     * reaches the same verdict here. */
    if (c->mesh && !parse_mesh(c->mesh, c->mesh_dims))
        return usage(cmd, err, "--mesh: expected three integers >= 1 'DP,TP,SP', got '%s'",
                     c->mesh);
    if (c->mesh) {
        int64_t prod = (int64_t)c->mesh_dims[0] * c->mesh_dims[1] * c->mesh_dims[2];
        if (prod != size)
            return usage(cmd, err, "--mesh %s has %" PRId64 " ranks but the job has %d (the "
                                   "product DP*TP*SP must equal the number of ranks)",
                         c->mesh, prod, size);
        if (c->mesh_dims[2] > 1 && c->op != MATTN__OP_RING)
            return usage(cmd, err, "--mesh %s has sp = %d: only --op ring shards the "
                                   "sequence; --op %s partitions batch and heads (sp = 1)",
                         c->mesh, c->mesh_dims[2], mattn__op_names[c->op]);
    }
    if (GIVEN("comm") && c->op != MATTN__OP_RING)
        return usage(cmd, err, "--comm chooses the ring's transport; it needs --op ring");

    if (c->synthetic) {
        if (!GIVEN("kv-seq"))
            c->kv_seq = c->seq;
        if (!GIVEN("kv-heads"))
            c->kv_heads = c->heads;
        if (!given_as(opts, n, given, "dv", 1))
            c->dv = c->dim;
        if (c->heads % c->kv_heads != 0)
            return usage(cmd, err, "--heads %" PRId64 " is not a multiple of --kv-heads %" PRId64,
                         c->heads, c->kv_heads);
    }
    if (!GIVEN("warmup"))
        c->warmup = c->synthetic ? 1 : 0;
    if (!GIVEN("repeat"))
        c->repeat = c->synthetic ? 3 : 1;
    return MATTN__CLI_EXIT_OK;
#undef GIVEN
}

/* ------------------------------------------------------------------ status */

int mattn__attn_agree(MPI_Comm comm, int rc)
{
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    if (size == 1)
        return rc;
    int mine = rc != MATTN_OK ? rank : size, first = size;
    if (MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Allreduce failed while agreeing on a status");
    if (first == size)
        return MATTN_OK;
    struct {
        int code;
        char msg[500];
    } m;
    memset(&m, 0, sizeof m);
    if (rank == first) {
        m.code = rc;
        snprintf(m.msg, sizeof m.msg, "%s", mattn_last_error());
    }
    if (MPI_Bcast(&m, (int)sizeof m, MPI_BYTE, first, comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Bcast failed while agreeing on a status");
    m.msg[sizeof m.msg - 1] = '\0';
    if (first == 0 || rank == first)
        return mattn__fail(m.code, "%s", m.msg);
    return mattn__fail(m.code, "rank %d: %s", first, m.msg);
}

/* ------------------------------------------------------------------ loading */

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
static int layout_dims(const mattn__attn_config *c, const char *path, const char *role,
                       const char *l, const char *h, const char *d, const mattn__npy_array *a,
                       int64_t out[4])
{
    char shp[160];
    int bthd = c->layout == MATTN__LAYOUT_BTHD;
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

int mattn__attn_load_like(const mattn__attn_config *c, const char *path, const char *role,
                          int64_t B, int64_t L, int64_t H, int64_t Dm, mattn__npy_array *a)
{
    int64_t s[4] = {0, 0, 0, 0};
    char shp[160];
    int rc;
    if (path == NULL)
        return MATTN_OK;
    if ((rc = load_typed(path, role, MATTN__NPY_F32, a)) ||
        (rc = layout_dims(c, path, role, "T", "Hq", "Dv", a, s)))
        return rc;
    if (s[0] != B || s[1] != L || s[2] != H || s[3] != Dm) {
        int bthd = c->layout == MATTN__LAYOUT_BTHD;
        return mattn__fail(MATTN_ERR_SHAPE, "%s: %s has shape %s but the problem needs [%" PRId64
                           ", %" PRId64 ", %" PRId64 ", %" PRId64 "] (--layout %s)", path, role,
                           shape_of(a, shp, sizeof shp), B, bthd ? L : H, bthd ? H : L, Dm,
                           bthd ? "bthd" : "bhtd");
    }
    return MATTN_OK;
}

static int load_qkv_files(const mattn__attn_config *c, mattn__attn_problem *p)
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

/* splitmix64 of a counter: element `index` of a stream is computable alone,
 * so every rank can make its own shard of the same global tensor. */
float mattn__attn_synth(const mattn__attn_config *c, uint64_t stream, int64_t index)
{
    uint64_t z = c->seed * 0x100000001b3ULL + stream + (uint64_t)(index + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / 8388608.0 - 1.0); /* 24 bits over (-1, 1) */
}

static int alloc_array(mattn__npy_array *a, const char *what, int64_t B, int64_t L, int64_t H,
                       int64_t Dm, int layout)
{
    int64_t n = 0;
    int rc = mattn__attn_count(what, 4, (const int64_t[]){B, L, H, Dm}, sizeof(float), &n);
    if (rc)
        return rc;
    memset(a, 0, sizeof *a);
    a->dtype = MATTN__NPY_F32;
    snprintf(a->descr, sizeof a->descr, "<f4");
    a->ndim = 4;
    a->shape[0] = B;
    a->shape[1] = layout == MATTN__LAYOUT_BTHD ? L : H;
    a->shape[2] = layout == MATTN__LAYOUT_BTHD ? H : L;
    a->shape[3] = Dm;
    a->count = n;
    a->data = malloc(n ? (size_t)n * sizeof(float) : 1);
    if (a->data == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "out of memory for %s (%" PRId64 " floats)", what, n);
    return MATTN_OK;
}

int mattn__attn_materialise(const mattn__attn_config *c, mattn__attn_problem *p)
{
    int rc;
    const int64_t L[3] = {p->T, p->S, p->S}, H[3] = {p->Hq, p->Hkv, p->Hkv},
                  Dm[3] = {p->D, p->D, p->Dv};
    mattn__npy_array *a[3] = {&p->q, &p->k, &p->v};
    mattn_tensor *t[3] = {&p->tq, &p->tk, &p->tv};
    const char *what[3] = {"the synthetic q", "the synthetic k", "the synthetic v"};
    for (int x = 0; x < 3; x++) {
        if (a[x]->data)
            continue;
        if ((rc = alloc_array(a[x], what[x], p->B, L[x], H[x], Dm[x], c->layout)))
            return rc;
        float *d = a[x]->data;
        for (int64_t i = 0; i < a[x]->count; i++)
            d[i] = mattn__attn_synth(c, (uint64_t)x + 1, i);
        *t[x] = mattn__attn_view(c, d, p->B, L[x], H[x], Dm[x]);
    }
    return MATTN_OK;
}

mattn_tensor mattn__attn_view(const mattn__attn_config *c, const float *data, int64_t B,
                              int64_t L, int64_t H, int64_t Dm)
{
    return c->layout == MATTN__LAYOUT_BTHD ? mattn_tensor_bthd(data, B, L, H, Dm)
                                           : mattn_tensor_bhtd(data, B, L, H, Dm);
}

/* Mask and bias: NumPy broadcasting of [T,S], [X,T,S] or [X,Y,T,S] to
 * [B, Hq, T, S], where each leading dim must be 1 or the full size. (A 3-d
 * array is [Hq|1, T, S], as NumPy reads it, not [B, T, S].) */
static int broadcast_dims(const char *path, const char *role, const mattn__npy_array *a,
                          const mattn__attn_problem *p, int64_t *mb, int64_t *mh)
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

/* Rank 0: the problem's sizes and every input file, checked. */
static int load_root(const mattn__attn_config *c, int materialise, mattn__attn_problem *p)
{
    int rc;
    char shp[160];
    if (c->synthetic) {
        p->B = c->batch, p->T = c->seq, p->S = c->kv_seq;
        p->Hq = c->heads, p->Hkv = c->kv_heads, p->D = c->dim, p->Dv = c->dv;
        if (materialise && (rc = mattn__attn_materialise(c, p)))
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
    p->mask_b = p->mask_h = p->bias_b = p->bias_h = 1;
    if ((c->mask && (rc = broadcast_dims(c->mask, "mask", &p->mask, p, &p->mask_b, &p->mask_h))) ||
        (c->bias && (rc = broadcast_dims(c->bias, "bias", &p->bias, p, &p->bias_b, &p->bias_h))))
        return rc;
    if (!c->synthetic || materialise) {
        p->tq = mattn__attn_view(c, p->q.data, p->B, p->T, p->Hq, p->D);
        p->tk = mattn__attn_view(c, p->k.data, p->B, p->S, p->Hkv, p->D);
        p->tv = mattn__attn_view(c, p->v.data, p->B, p->S, p->Hkv, p->Dv);
    }
    return MATTN_OK;
}

/* Broadcast of a byte array that may exceed an int count. */
static int bcast_bytes(void *data, size_t n, MPI_Comm comm)
{
    const size_t piece = (size_t)1 << 30;
    for (size_t at = 0; at < n; at += piece) {
        size_t len = n - at < piece ? n - at : piece;
        if (MPI_Bcast((char *)data + at, (int)len, MPI_BYTE, 0, comm) != MPI_SUCCESS)
            return mattn__fail(MATTN_ERR_MPI, "MPI_Bcast of a global argument failed");
    }
    return MATTN_OK;
}

/* Ranks other than 0: room for a global argument rank 0 loaded. */
static int receive_array(mattn__npy_array *a, mattn__npy_dtype dtype, int64_t count)
{
    memset(a, 0, sizeof *a);
    a->dtype = dtype;
    a->count = count;
    size_t el = dtype == MATTN__NPY_U8 ? 1 : 4;
    a->data = malloc(count ? (size_t)count * el : 1);
    return a->data ? MATTN_OK
                   : mattn__fail(MATTN_ERR_NOMEM, "out of memory for a global argument of %"
                                 PRId64 " elements", count);
}

int mattn__attn_load(MPI_Comm comm, const mattn__attn_config *c, mattn__attn_problem *p)
{
    int rank = 0, size = 1, rc = MATTN_OK;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    memset(p, 0, sizeof *p);
    int mesh = mattn__attn_uses_mesh(c, size);
    if (rank == 0)
        rc = load_root(c, !mesh, p);
    if ((rc = mattn__attn_agree(comm, rc)))
        return rc;

    /* Sizes and which global arguments exist, then the arguments. */
    int64_t s[12] = {p->B, p->T, p->S, p->Hq, p->Hkv, p->D, p->Dv,
                     p->mask_b, p->mask_h, p->bias_b, p->bias_h,
                     (p->sinks.data != NULL) | (p->mask.data != NULL) << 1 |
                         (p->bias.data != NULL) << 2};
    if (size > 1 && MPI_Bcast(s, 12, MPI_INT64_T, 0, comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Bcast of the problem's sizes failed");
    p->B = s[0], p->T = s[1], p->S = s[2], p->Hq = s[3], p->Hkv = s[4], p->D = s[5];
    p->Dv = s[6], p->mask_b = s[7], p->mask_h = s[8], p->bias_b = s[9], p->bias_h = s[10];
    if (size > 1) {
        struct {
            mattn__npy_array *a;
            mattn__npy_dtype dtype;
            int64_t count;
            int present;
        } g[3] = {{&p->sinks, MATTN__NPY_F32, p->Hq, (int)(s[11] & 1)},
                  {&p->mask, MATTN__NPY_U8, p->mask_b * p->mask_h * p->T * p->S,
                   (int)(s[11] >> 1 & 1)},
                  {&p->bias, MATTN__NPY_F32, p->bias_b * p->bias_h * p->T * p->S,
                   (int)(s[11] >> 2 & 1)}};
        for (int x = 0; x < 3; x++) {
            if (!g[x].present)
                continue;
            rc = rank == 0 ? MATTN_OK : receive_array(g[x].a, g[x].dtype, g[x].count);
            if ((rc = mattn__attn_agree(comm, rc)) ||
                (rc = bcast_bytes(g[x].a->data,
                                  (size_t)g[x].count * (g[x].dtype == MATTN__NPY_U8 ? 1 : 4),
                                  comm)))
                return rc;
        }
    }

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
    if (p->mask.data)
        o->mask = mattn_mask_dense(p->mask.data, p->mask_b, p->mask_h, p->T, p->S);
    if (p->bias.data)
        o->bias = mattn_bias_dense(p->bias.data, p->bias_b, p->bias_h, p->T, p->S);
    o->dropout_p = (float)c->dropout;
    o->dropout_seed = c->seed;
    o->threads = (int)c->threads;
    o->block_q = (int)c->block_q;
    o->block_kv = (int)c->block_kv;
    return MATTN_OK;
}

void mattn__attn_problem_free(mattn__attn_problem *p)
{
    mattn__npy_free(&p->q);
    mattn__npy_free(&p->k);
    mattn__npy_free(&p->v);
    mattn__npy_free(&p->sinks);
    mattn__npy_free(&p->q_seg);
    mattn__npy_free(&p->kv_seg);
    mattn__npy_free(&p->mask);
    mattn__npy_free(&p->bias);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------ placement */

int mattn__attn_uses_mesh(const mattn__attn_config *c, int size)
{
    return size > 1 || c->mesh != NULL || c->op == MATTN__OP_RING;
}

static int64_t gcd64(int64_t a, int64_t b)
{
    while (b) {
        int64_t t = a % b;
        a = b, b = t;
    }
    return a;
}

int mattn__attn_alloc_local(const mattn__attn_local *l, mattn_shard_role role, int64_t Dm,
                            const char *what, float **data, mattn_tensor *t)
{
    const mattn_shard *s = &l->shard;
    int64_t L = role == MATTN_SHARD_Q ? s->q_len : s->kv_len;
    int64_t H = role == MATTN_SHARD_Q ? s->q_head_count : s->kv_head_count;
    int rc = mattn__attn_alloc_floats(data, what, 4, (const int64_t[]){s->batch_count, L, H, Dm});
    if (rc)
        return rc;
    *t = mattn_tensor_bthd(NULL, s->batch_count, L, H, Dm);
    t->data = *data; /* (not through the const parameter: the buffer is not written yet) */
    return MATTN_OK;
}

/* Global row of local row t of a shard's runs. */
static int64_t global_row(const int64_t start[2], const int64_t count[2], int64_t t)
{
    return t < count[0] ? start[0] + t : start[1] + (t - count[0]);
}

int mattn__attn_distribute(const mattn__attn_config *c, const mattn__attn_local *l,
                           mattn_shard_role role, const mattn_tensor *global, uint64_t stream,
                           const mattn_tensor *local)
{
    if (c->synthetic && global == NULL) {
        const mattn_shard *s = &l->shard;
        const int q = role == MATTN_SHARD_Q;
        const int64_t L = q ? l->shape.q_len : l->shape.kv_len;
        const int64_t H = q ? l->shape.q_heads : l->shape.kv_heads;
        const int64_t h0 = q ? s->q_head_start : s->kv_head_start;
        const int64_t *rs = q ? s->q_run_start : s->kv_run_start;
        const int64_t *rc = q ? s->q_run_count : s->kv_run_count;
        const int64_t Dm = local->dim;
        for (int64_t b = 0; b < local->batch; b++)
            for (int64_t t = 0; t < local->seq; t++)
                for (int64_t h = 0; h < local->heads; h++) {
                    int64_t gb = s->batch_start + b, gt = global_row(rs, rc, t), gh = h0 + h;
                    int64_t base = c->layout == MATTN__LAYOUT_BTHD ? ((gb * L + gt) * H + gh) * Dm
                                                                   : ((gb * H + gh) * L + gt) * Dm;
                    float *dst = local->data + b * local->stride_batch + t * local->stride_seq +
                                 h * local->stride_head;
                    for (int64_t d = 0; d < Dm; d++)
                        dst[d] = mattn__attn_synth(c, stream, base + d);
                }
        return MATTN_OK;
    }
    return mattn_mesh_scatter(l->mesh, &l->shape, role, 0, global, local);
}

int mattn__attn_place(MPI_Comm comm, const mattn__attn_config *c, const mattn__attn_problem *p,
                      mattn__attn_local *l)
{
    int rank = 0, size = 1, rc;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    memset(l, 0, sizeof *l);
    l->opts = p->opts;
    if (!mattn__attn_uses_mesh(c, size)) {
        l->dims[0] = l->dims[1] = l->dims[2] = 1;
        l->tq = p->tq, l->tk = p->tk, l->tv = p->tv;
        return MATTN_OK;
    }

    if (c->mesh) {
        memcpy(l->dims, c->mesh_dims, sizeof l->dims);
    } else if (c->op == MATTN__OP_RING) {
        l->dims[0] = l->dims[1] = 1, l->dims[2] = size;
    } else { /* whole batch entries first (no work split inside a head group), heads next */
        l->dims[0] = (int)gcd64(size, p->B), l->dims[1] = size / l->dims[0], l->dims[2] = 1;
    }
    if ((rc = mattn_mesh_create(comm, l->dims[0], l->dims[1], l->dims[2], &l->mesh)))
        return rc;
    l->shape = (mattn_dist_shape){p->B, p->T, p->S, p->Hq, p->Hkv,
                                  (mattn_seq_layout)c->seq_layout};
    rc = mattn_mesh_shard(l->mesh, &l->shape, mattn_mesh_rank(l->mesh), &l->shard);
    if (rc == MATTN_OK)
        rc = mattn__attn_alloc_local(l, MATTN_SHARD_Q, p->D, "the local q", &l->q, &l->tq);
    if (rc == MATTN_OK)
        rc = mattn__attn_alloc_local(l, MATTN_SHARD_KV, p->D, "the local k", &l->k, &l->tk);
    if (rc == MATTN_OK)
        rc = mattn__attn_alloc_local(l, MATTN_SHARD_KV, p->Dv, "the local v", &l->v, &l->tv);
    int has_seg = c->q_seg != NULL;
    if (rc == MATTN_OK && has_seg) {
        const mattn_shard *s = &l->shard;
        l->q_seg = malloc(sizeof(int32_t) * (size_t)(s->batch_count * s->q_len + 1));
        l->kv_seg = malloc(sizeof(int32_t) * (size_t)(s->batch_count * s->kv_len + 1));
        if (l->q_seg == NULL || l->kv_seg == NULL)
            rc = mattn__fail(MATTN_ERR_NOMEM, "out of memory for local segment ids");
    }
    if ((rc = mattn__attn_agree(comm, rc)))
        return rc;
    const mattn_tensor *gq = rank == 0 && p->q.data ? &p->tq : NULL;
    const mattn_tensor *gk = rank == 0 && p->k.data ? &p->tk : NULL;
    const mattn_tensor *gv = rank == 0 && p->v.data ? &p->tv : NULL;
    if ((rc = mattn__attn_distribute(c, l, MATTN_SHARD_Q, gq, 1, &l->tq)) ||
        (rc = mattn__attn_distribute(c, l, MATTN_SHARD_KV, gk, 2, &l->tk)) ||
        (rc = mattn__attn_distribute(c, l, MATTN_SHARD_KV, gv, 3, &l->tv)))
        return mattn__attn_agree(comm, rc);
    if (has_seg &&
        ((rc = mattn_mesh_scatter_segment_ids(l->mesh, &l->shape, MATTN_SHARD_Q, 0,
                                              p->q_seg.data, l->q_seg)) ||
         (rc = mattn_mesh_scatter_segment_ids(l->mesh, &l->shape, MATTN_SHARD_KV, 0,
                                              p->kv_seg.data, l->kv_seg))))
        return rc;
    l->opts.q_segment_ids = l->q_seg;
    l->opts.kv_segment_ids = l->kv_seg;
    return MATTN_OK;
}

void mattn__attn_local_free(mattn__attn_local *l)
{
    mattn_mesh_free(l->mesh);
    free(l->q);
    free(l->k);
    free(l->v);
    free(l->q_seg);
    free(l->kv_seg);
    memset(l, 0, sizeof *l);
}

double mattn__attn_local_pairs(const mattn__attn_problem *p, const mattn__attn_local *l)
{
    if (l->mesh == NULL)
        return (double)mattn__ref_structural_pairs(&p->opts, p->T, p->S) * (double)p->B *
               (double)p->Hq;
    const mattn_shard *s = &l->shard;
    double pairs = 0.0;
    for (int r = 0; r < s->q_runs; r++) {
        mattn_options o = p->opts;
        o.q_offset += s->q_run_start[r];
        pairs += (double)mattn__ref_structural_pairs(&o, s->q_run_count[r], p->S);
    }
    return pairs * (double)s->batch_count * (double)s->q_head_count;
}

/* ------------------------------------------------------------------ splash */

/* *acc = *acc AND m (taking ownership of m); rc is the status of making m. */
static int and_into(mattn_splash_mask **acc, mattn_splash_mask *m, int rc)
{
    if (rc != MATTN_OK)
        return rc;
    if (*acc == NULL) {
        *acc = m;
        return MATTN_OK;
    }
    mattn_splash_mask *both = NULL;
    rc = mattn_splash_mask_and(*acc, m, &both);
    mattn_splash_mask_free(*acc);
    mattn_splash_mask_free(m);
    *acc = both;
    return rc;
}

int mattn__attn_splash_mask(const mattn__attn_problem *p, const mattn_options *opts,
                            mattn_options *call, mattn_splash_mask **mask)
{
    mattn_splash_mask *acc = NULL, *m = NULL;
    int rc = MATTN_OK;
    *call = *opts;
    /* Each predicate moves from the options into the mask object exactly
     * (the equivalences of mattn/splash.h); what has no mask kind (a chunk
     * without causal, a per-batch dense mask) stays in the options. */
    if (opts->causal && opts->chunk > 0) {
        rc = mattn_splash_mask_chunked(opts->chunk, &m);
        rc = and_into(&acc, m, rc);
        call->causal = 0, call->chunk = 0;
    } else if (opts->causal) {
        rc = mattn_splash_mask_causal(0, &m);
        rc = and_into(&acc, m, rc);
        call->causal = 0;
    }
    if (rc == MATTN_OK && (opts->window_left != -1 || opts->window_right != -1)) {
        rc = mattn_splash_mask_local(opts->window_left, opts->window_right, &m);
        rc = and_into(&acc, m, rc);
        call->window_left = call->window_right = -1;
    }
    if (rc == MATTN_OK && opts->mask.data && opts->mask.batch == 1) {
        const mattn_mask *mk = &opts->mask;
        if (mk->heads == 1) {
            rc = mattn_splash_mask_dense_ex(mk->data, p->T, p->S, mk->stride_row, opts->q_offset,
                                            opts->kv_offset, &m);
            rc = and_into(&acc, m, rc);
        } else {
            mattn_splash_mask **heads = calloc((size_t)mk->heads, sizeof *heads);
            if (heads == NULL)
                rc = mattn__fail(MATTN_ERR_NOMEM, "out of memory for per-head masks");
            for (int64_t h = 0; rc == MATTN_OK && h < mk->heads; h++)
                rc = mattn_splash_mask_dense_ex(mk->data + h * mk->stride_head, p->T, p->S,
                                                mk->stride_row, opts->q_offset, opts->kv_offset,
                                                &heads[h]);
            if (rc == MATTN_OK) {
                rc = mattn_splash_mask_per_head(heads, mk->heads, &m);
                rc = and_into(&acc, m, rc);
            }
            for (int64_t h = 0; heads && h < mk->heads; h++)
                mattn_splash_mask_free(heads[h]);
            free(heads);
        }
        call->mask.data = NULL;
    }
    if (rc == MATTN_OK && acc == NULL)
        rc = mattn_splash_mask_full(&acc);
    if (rc != MATTN_OK) {
        mattn_splash_mask_free(acc);
        acc = NULL;
    }
    *mask = acc;
    return rc;
}

/* ------------------------------------------------------------------ sizes */

int mattn__attn_count(const char *what, int k, const int64_t *dims, size_t size, int64_t *n)
{
    int64_t bytes = (int64_t)size;
    int big = 0, empty = 0;
    for (int x = 0; x < k; x++) {
        empty |= dims[x] == 0;
        big |= dims[x] < 0 || (dims[x] > 0 && __builtin_mul_overflow(bytes, dims[x], &bytes));
    }
    if (big || (uint64_t)bytes > SIZE_MAX) {
        char shape[160];
        return mattn__fail(MATTN_ERR_NOMEM, "%s %s is too large", what,
                           mattn__npy_shape_str(dims, k, shape, sizeof shape));
    }
    *n = empty ? 0 : bytes / (int64_t)size;
    return MATTN_OK;
}

int mattn__attn_alloc_floats(float **x, const char *what, int k, const int64_t *dims)
{
    int64_t n = 0;
    int rc = mattn__attn_count(what, k, dims, sizeof(float), &n);
    if (rc == MATTN_OK && (*x = malloc(n ? (size_t)n * sizeof(float) : 1)) == NULL)
        rc = mattn__fail(MATTN_ERR_NOMEM, "out of memory for %s (%" PRId64 " floats)", what, n);
    return rc;
}
