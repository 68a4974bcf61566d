/* Argument checks shared by the distributed front doors. */
#include "mesh/dist.h"

#include <string.h>

#include "core/hash.h"
#include "core/status.h"
#include "mesh/shard.h"

static int check_sizes(const char *name, const mattn_tensor *t, int64_t batch, int64_t seq,
                       int64_t heads)
{
    if (t->batch != batch || t->seq != seq || t->heads != heads)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "local %s is [%lld, %lld, %lld, *] but this rank's shard is "
                           "[%lld, %lld, %lld, *]",
                           name, (long long)t->batch, (long long)t->seq, (long long)t->heads,
                           (long long)batch, (long long)seq, (long long)heads);
    return MATTN_OK;
}

int mattn__dist_prepare(const mattn_mesh *m, const mattn_dist_shape *shape,
                        const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                        const mattn_tensor *o, float *lse, const mattn_options *opts,
                        mattn__dist *d)
{
    int rc;
    memset(d, 0, sizeof *d);
    if (m == NULL)
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    if ((rc = mattn__shape_check(shape)))
        return rc;
    if (q == NULL || k == NULL || v == NULL || o == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s is NULL", !q ? "q" : !k ? "k" : !v ? "v" : "o");
    if (opts == NULL)
        return mattn__fail(MATTN_ERR_ARG, "options are NULL");
    mattn_shard *sh = &d->shard;
    mattn__shard_of(shape, m->dp, m->tp, m->sp, m->rank, sh);
    if ((rc = check_sizes("q", q, sh->batch_count, sh->q_len, sh->q_head_count)) ||
        (rc = check_sizes("o", o, sh->batch_count, sh->q_len, sh->q_head_count)) ||
        (rc = check_sizes("k", k, sh->batch_count, sh->kv_len, sh->kv_head_count)) ||
        (rc = check_sizes("v", v, sh->batch_count, sh->kv_len, sh->kv_head_count)))
        return rc;

    /* The local tensors and the options that apply to them; mask, bias and
     * sinks are global and checked below. A rank with no heads has no
     * local problem (mattn_tensor needs a head). */
    if (sh->q_head_count > 0) {
        mattn_options lo = *opts;
        lo.mask.data = NULL;
        lo.bias.data = NULL;
        lo.sinks = NULL;
        if ((rc = mattn__problem_init(&d->local, q, k, v, o, lse, &lo)))
            return rc;
    }

    /* The options against the GLOBAL shape: problem_init on placeholder
     * tensors of the global sizes (never read; o gets dense strides because
     * outputs must not overlap) checks mask and
     * bias shapes, sinks and every option with the same code and messages
     * as a single-rank call. */
    static const float placeholder;
    float *ph = (float *)&placeholder;
    mattn_tensor gq = {ph, shape->batch, shape->q_len, shape->q_heads, q->dim, 0, 0, 0};
    mattn_tensor gk = {ph, shape->batch, shape->kv_len, shape->kv_heads, q->dim, 0, 0, 0};
    mattn_tensor gv = {ph, shape->batch, shape->kv_len, shape->kv_heads, v->dim, 0, 0, 0};
    mattn_tensor go = mattn_tensor_bthd(ph, shape->batch, shape->q_len, shape->q_heads, v->dim);
    if ((rc = mattn__problem_init(&d->global, &gq, &gk, &gv, &go, NULL, opts)))
        return rc;

    d->active = sh->batch_count > 0 && sh->q_head_count > 0;
    if (sh->q_head_count > 0) {
        const mattn__problem *g = &d->global;
        mattn__problem *p = &d->local;
        int64_t b0 = sh->batch_start, h0 = sh->q_head_start;
        /* Broadcast dims have stride 0, so b0 and h0 may be added blindly. */
        if (g->mask) {
            p->mask = g->mask + b0 * g->mask_sb + h0 * g->mask_sh;
            p->mask_sb = g->mask_sb, p->mask_sh = g->mask_sh, p->mask_st = g->mask_st;
        }
        if (g->bias) {
            p->bias = g->bias + b0 * g->bias_sb + h0 * g->bias_sh;
            p->bias_sb = g->bias_sb, p->bias_sh = g->bias_sh, p->bias_st = g->bias_st;
        }
        p->sinks = g->sinks ? g->sinks + h0 : NULL;
        p->dropout_b0 = g->dropout_b0 + b0;
        p->dropout_h0 = g->dropout_h0 + h0;
    }
    return MATTN_OK;
}

static int64_t float_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (int64_t)u;
}

/* Hash of the bytes of a [batch, heads, rows, cols] array of elem-byte
 * entries with element strides sb, sh, st (contiguous columns). */
static uint64_t hash_array(uint64_t h, const void *data, size_t elem, int64_t batch,
                           int64_t heads, int64_t rows, int64_t cols, int64_t sb, int64_t sh,
                           int64_t st)
{
    const char *base = data;
    for (int64_t b = 0; b < batch; b++)
        for (int64_t hd = 0; hd < heads; hd++)
            for (int64_t r = 0; r < rows; r++)
                h = mattn__hash_bytes(h, base + (b * sb + hd * sh + r * st) * (int64_t)elem,
                                      (size_t)cols * elem);
    return h;
}

/* One fingerprint of the global arrays every rank must pass alike: the
 * boolean mask, the bias and the sinks (their shapes are agreed beside it,
 * so the hash only has to tell contents apart). Called after a successful
 * local check, so the sizes are valid. */
static uint64_t hash_global_arrays(const mattn_options *o, int64_t q_heads)
{
    uint64_t h = MATTN__HASH_SEED;
    const mattn_mask *mk = &o->mask;
    if (mk->data)
        h = hash_array(h, mk->data, 1, mk->batch, mk->heads, mk->rows, mk->cols,
                       mk->stride_batch, mk->stride_head, mk->stride_row);
    const mattn_bias *bs = &o->bias;
    if (bs->data)
        h = hash_array(mattn__hash_u64(h, 1), bs->data, sizeof(float), bs->batch, bs->heads,
                       bs->rows, bs->cols, bs->stride_batch, bs->stride_head,
                       bs->stride_row);
    if (o->sinks)
        h = mattn__hash_bytes(mattn__hash_u64(h, 2), o->sinks, (size_t)q_heads * sizeof(float));
    return h;
}

int mattn__dist_agree(const mattn_mesh *m, int local_status, const mattn_dist_shape *s,
                      const mattn_tensor *q, const mattn_tensor *v, const mattn_options *o,
                      mattn_op op, const mattn_ring_options *ring)
{
    enum { N = 32 };
    static const char *const names[N] = {
        "batch",       "q_len",        "kv_len",      "q_heads",     "kv_heads",
        "layout",      "head_dim",     "value_dim",   "causal",      "q_offset",
        "kv_offset",   "window_left",  "window_right", "chunk",      "segment_ids",
        "mask",        "bias",         "sinks",       "scale",       "softcap",
        "dropout_p",   "dropout_seed", "dropout_batch_offset", "dropout_head_offset",
        "operator",    "ring comm mode", "ring skip_comm", "mask.batch", "mask.heads",
        "bias.batch",  "bias.heads",
        "mask, bias or sinks contents (every rank must pass the same global arrays)"};
    static const char kinds[N + 1] = "iiiiiiiiiiiiiiiiiifffuiiiiiiiiih";
    /* A rank that failed may hold NULLs: it sends -1s, its status wins. */
    int64_t x[N];
    for (int i = 0; i < N; i++)
        x[i] = -1;
    if (s) {
        x[0] = s->batch, x[1] = s->q_len, x[2] = s->kv_len, x[3] = s->q_heads;
        x[4] = s->kv_heads, x[5] = (int64_t)s->layout;
    }
    if (q)
        x[6] = q->dim;
    if (v)
        x[7] = v->dim;
    if (o) {
        x[8] = o->causal != 0, x[9] = o->q_offset, x[10] = o->kv_offset;
        x[11] = o->window_left, x[12] = o->window_right, x[13] = o->chunk;
        x[14] = o->q_segment_ids != NULL, x[15] = o->mask.data != NULL;
        x[16] = o->bias.data != NULL, x[17] = o->sinks != NULL;
        x[18] = float_bits(o->scale), x[19] = float_bits(o->softcap);
        x[20] = float_bits(o->dropout_p), x[21] = (int64_t)o->dropout_seed;
        x[22] = o->dropout_batch_offset, x[23] = o->dropout_head_offset;
        /* Broadcast dims decide the ring's plan and the size of the dbias
         * reduction: ranks that disagree would wait for each other. */
        x[27] = o->mask.data ? o->mask.batch : 0, x[28] = o->mask.data ? o->mask.heads : 0;
        x[29] = o->bias.data ? o->bias.batch : 0, x[30] = o->bias.data ? o->bias.heads : 0;
        if (local_status == MATTN_OK && s)
            x[31] = (int64_t)hash_global_arrays(o, s->q_heads);
    }
    /* Ring options only matter to the ring (low byte: backward calls tag the
     * operator, mesh/partition_bwd.h). */
    mattn_ring_options ro =
        ring && (op & 0xff) == MATTN_OP_RING ? *ring : mattn_ring_options_default();
    x[24] = (int64_t)op, x[25] = (int64_t)ro.comm, x[26] = ro.skip_comm != 0;
    return mattn__mesh_agree_values(m, local_status, x, names, kinds, N);
}

mattn_options mattn__dist_local_options(const mattn_options *opts, const mattn__dist *d)
{
    const mattn__problem *p = &d->local;
    mattn_options lo = *opts;
    lo.sinks = p->sinks;
    lo.dropout_batch_offset = p->dropout_b0;
    lo.dropout_head_offset = p->dropout_h0;
    if (opts->mask.data) {
        lo.mask.data = p->mask;
        lo.mask.batch = opts->mask.batch == 1 ? 1 : d->shard.batch_count;
        lo.mask.heads = opts->mask.heads == 1 ? 1 : d->shard.q_head_count;
    }
    if (opts->bias.data) {
        lo.bias.data = p->bias;
        lo.bias.batch = opts->bias.batch == 1 ? 1 : d->shard.batch_count;
        lo.bias.heads = opts->bias.heads == 1 ? 1 : d->shard.q_head_count;
    }
    return lo;
}
