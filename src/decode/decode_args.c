/* Argument checks shared by the decode front doors: tensors, options, and
 * the contiguous-cache problem (ar and ragged decode, single rank or split
 * over ranks). Every failure names the culprit. */
#include <math.h>

#include "core/problem.h"
#include "core/scratch.h"
#include "core/status.h"
#include "decode/decode.h"

/* Bounds that keep position arithmetic (qp - left, qp + right + 1, chunk
 * ends) far from int64 overflow; real problems are many orders smaller. */
#define DIM_MAX ((int64_t)1 << 40)
#define POS_MAX ((int64_t)1 << 60)
#define DEC_PIECE 2048 /* default split-KV piece, keys */

int mattn__dec_check_tensor(const char *name, const mattn_tensor *t, int64_t batch,
                            int64_t seq, int64_t heads, int64_t dim, int need_data)
{
    if (t == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s is NULL", name);
    if (t->batch < 0 || t->seq < 0 || t->heads < 1 || t->dim < 1 || t->batch > DIM_MAX ||
        t->seq > DIM_MAX || t->heads > DIM_MAX || t->dim > DIM_MAX)
        return mattn__fail(MATTN_ERR_SHAPE, "%s has invalid shape [%lld, %lld, %lld, %lld]",
                           name, (long long)t->batch, (long long)t->seq,
                           (long long)t->heads, (long long)t->dim);
    if (t->stride_batch < 0 || t->stride_seq < 0 || t->stride_head < 0)
        return mattn__fail(MATTN_ERR_ARG, "%s has a negative stride", name);
    int64_t n;
    if (__builtin_mul_overflow(t->batch, t->seq, &n) ||
        __builtin_mul_overflow(n, t->heads, &n) || __builtin_mul_overflow(n, t->dim, &n))
        return mattn__fail(MATTN_ERR_SHAPE, "%s has too many elements", name);
    if (need_data && n > 0 && t->data == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s->data is NULL", name);
    if ((batch >= 0 && t->batch != batch) || (seq >= 0 && t->seq != seq) ||
        (heads >= 0 && t->heads != heads) || (dim >= 0 && t->dim != dim))
        return mattn__fail(MATTN_ERR_SHAPE,
                           "%s is [%lld, %lld, %lld, %lld] but must be [%lld, %lld, %lld, "
                           "%lld] (-1: any)",
                           name, (long long)t->batch, (long long)t->seq,
                           (long long)t->heads, (long long)t->dim, (long long)batch,
                           (long long)seq, (long long)heads, (long long)dim);
    return MATTN_OK;
}

int mattn__dec_options(mattn__dec *p, const mattn_options *o)
{
    if (o == NULL)
        return mattn__fail(MATTN_ERR_ARG, "options are NULL");
    /* What decode cannot honour is an error, never silently ignored. */
    if (o->q_offset != 0)
        return mattn__fail(MATTN_ERR_UNSUPPORTED,
                           "decode: q_offset=%lld; query positions come from the lengths",
                           (long long)o->q_offset);
    if (o->q_segment_ids || o->kv_segment_ids)
        return mattn__fail(MATTN_ERR_UNSUPPORTED, "decode: segment ids are not supported");
    if (o->mask.data)
        return mattn__fail(MATTN_ERR_UNSUPPORTED, "decode: a boolean mask is not supported");
    if (o->bias.data)
        return mattn__fail(MATTN_ERR_UNSUPPORTED, "decode: a bias is not supported");
    if (o->dropout_p != 0.0f)
        return mattn__fail(MATTN_ERR_UNSUPPORTED, "decode: dropout_p=%g is not supported",
                           o->dropout_p);
    if (o->block_q != 0)
        return mattn__fail(MATTN_ERR_UNSUPPORTED,
                           "decode: block_q=%d has no meaning (one query block)", o->block_q);
    if (!isfinite(o->scale))
        return mattn__fail(MATTN_ERR_ARG, "scale=%g is not finite", o->scale);
    if (!isfinite(o->softcap) || o->softcap < 0)
        return mattn__fail(MATTN_ERR_ARG, "softcap=%g must be finite and >= 0 (0 = off)",
                           o->softcap);
    if (o->window_left < -1 || o->window_right < -1 || o->window_left > POS_MAX ||
        o->window_right > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "window (%lld, %lld) must be >= -1 (-1 = unbounded)",
                           (long long)o->window_left, (long long)o->window_right);
    if (o->chunk < 0 || o->chunk > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "chunk=%lld must be >= 0 (0 = off)",
                           (long long)o->chunk);
    if (o->kv_offset < 0 || o->kv_offset > POS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "kv_offset=%lld must be in [0, 2^60]",
                           (long long)o->kv_offset);
    if (o->threads < 0 || o->threads > MATTN__THREADS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "threads=%d must be in [0, %d] (0 = default)",
                           o->threads, MATTN__THREADS_MAX);
    if (o->block_kv < 0 || o->block_kv > (1 << 30))
        return mattn__fail(MATTN_ERR_ARG, "block_kv=%d must be in [0, 2^30]", o->block_kv);
    if (o->sinks)
        for (int64_t h = 0; h < p->Hq; h++)
            if (isnan(o->sinks[h]) || o->sinks[h] == INFINITY)
                return mattn__fail(MATTN_ERR_ARG, "sinks[%lld]=%g is not a valid logit",
                                   (long long)h, o->sinks[h]);
    p->scale = o->scale != 0.0f ? o->scale : (float)(1.0 / sqrt((double)p->D));
    p->softcap = o->softcap;
    p->window_left = o->window_left;
    p->window_right = o->window_right;
    p->chunk = o->chunk;
    p->sinks = o->sinks;
    p->fold_sinks = 1;
    p->threads = mattn__resolve_threads(o->threads);
    p->piece = o->block_kv > 0 ? o->block_kv : DEC_PIECE;
    return MATTN_OK;
}

int mattn__dec_contiguous(mattn__dec *p, const mattn_tensor *q, const mattn_tensor *k,
                          const mattn_tensor *v, const int32_t *starts, const int32_t *ends,
                          const mattn_tensor *o, const mattn_options *opts, int whole)
{
    int rc;
    *p = (mattn__dec){0};
    int need_data = o != NULL; /* the cost estimate reads shapes only */
    if ((rc = mattn__dec_check_tensor("q", q, -1, 1, -1, -1, need_data)))
        return rc;
    int64_t B = q->batch, Hq = q->heads, D = q->dim;
    if ((rc = mattn__dec_check_tensor("k", k, B, -1, -1, D, need_data)))
        return rc;
    int64_t S = k->seq, Hkv = k->heads;
    if ((rc = mattn__dec_check_tensor("v", v, B, S, Hkv, -1, need_data)))
        return rc;
    int64_t Dv = v->dim;
    if (o && (rc = mattn__dec_check_tensor("o", o, B, 1, Hq, Dv, 1)))
        return rc;
    if (Hq % Hkv != 0)
        return mattn__fail(MATTN_ERR_SHAPE, "q_heads=%lld is not a multiple of kv_heads=%lld",
                           (long long)Hq, (long long)Hkv);
    if (B > 0 && ends == NULL)
        return mattn__fail(MATTN_ERR_ARG, "the sequence ends (index / ends) are NULL");
    p->nseq = B, p->Hq = Hq, p->Hkv = Hkv, p->group = Hq / Hkv, p->D = D, p->Dv = Dv;
    if ((rc = mattn__dec_options(p, opts)))
        return rc;
    int64_t off = opts->kv_offset;
    for (int64_t b = 0; b < B; b++) {
        int64_t lo = starts ? starts[b] : 0, hi = ends[b];
        if (lo < 0 || lo > hi)
            return mattn__fail(MATTN_ERR_ARG,
                               "sequence %lld: starts=%lld, end=%lld (need 0 <= starts <= end)",
                               (long long)b, (long long)lo, (long long)hi);
        if (whole && hi > lo && (lo < off || hi > off + S))
            return mattn__fail(MATTN_ERR_SHAPE,
                               "sequence %lld: keys [%lld, %lld) are not all in the cache, "
                               "which holds positions [%lld, %lld)",
                               (long long)b, (long long)lo, (long long)hi, (long long)off,
                               (long long)(off + S));
    }

    mattn__dec_seq *seq = mattn__scratch_get(sizeof(mattn__dec_seq) * (size_t)(B ? B : 1));
    if (seq == NULL)
        return mattn__fail(MATTN_ERR_NOMEM, "decode: cannot allocate %lld sequences",
                           (long long)B);
    for (int64_t b = 0; b < B; b++)
        seq[b] = (mattn__dec_seq){.q0 = b, .qn = 1, .qp_last = (int64_t)ends[b] - 1,
                                  .lo = starts ? starts[b] : 0, .hi = ends[b], .pos0 = off,
                                  .len = S, .batch = b};
    p->seq = seq;
    p->q = q->data, p->q_st = q->stride_batch, p->q_sh = q->stride_head;
    p->k = k->data, p->k_sb = k->stride_batch, p->k_ss = k->stride_seq, p->k_sh = k->stride_head;
    p->v = v->data, p->v_sb = v->stride_batch, p->v_ss = v->stride_seq, p->v_sh = v->stride_head;
    if (o)
        p->o = o->data, p->o_st = o->stride_batch, p->o_sh = o->stride_head;
    return MATTN_OK;
}
