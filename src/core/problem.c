/* Argument validation shared by every operator front door. */
#include "core/problem.h"

#include <math.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "core/status.h"

/* Sizes above 2^40 per dimension are certainly a caller bug, and keeping them
 * bounded lets position arithmetic (qp - left, qp + right) never overflow. */
#define DIM_MAX ((int64_t)1 << 40)
#define OFFSET_MAX ((int64_t)1 << 60)

static int check_tensor(const char *name, const mattn_tensor *t)
{
    if (t == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s is NULL", name);
    if (t->batch < 0 || t->seq < 0 || t->heads < 1 || t->dim < 1 ||
        t->batch > DIM_MAX || t->seq > DIM_MAX || t->heads > DIM_MAX ||
        t->dim > DIM_MAX)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "%s has invalid shape [%lld, %lld, %lld, %lld]", name,
                           (long long)t->batch, (long long)t->seq,
                           (long long)t->heads, (long long)t->dim);
    if (t->stride_batch < 0 || t->stride_seq < 0 || t->stride_head < 0)
        return mattn__fail(MATTN_ERR_ARG, "%s has a negative stride", name);
    /* The nonzero sizes must multiply without overflow even when another is
     * 0 (as NumPy requires): later code multiplies them in other orders. */
    int64_t n = 1, dims[4] = {t->batch, t->seq, t->heads, t->dim};
    for (int x = 0; x < 4; x++)
        if (dims[x] > 0 && __builtin_mul_overflow(n, dims[x], &n))
            return mattn__fail(MATTN_ERR_SHAPE, "%s has too many elements", name);
    if (t->batch == 0 || t->seq == 0)
        n = 0;
    if (n > 0 && t->data == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s->data is NULL", name);
    return MATTN_OK;
}

/* True when two elements of t share an address (a zero or too small stride
 * on a dim of size > 1): an output like that would be a data race. Sorting
 * the dims by stride, each stride must step over everything inside it. */
int mattn__tensor_overlaps(const mattn_tensor *t)
{
    int64_t n[3] = {t->batch, t->seq, t->heads};
    int64_t s[3] = {t->stride_batch, t->stride_seq, t->stride_head};
    for (int a = 0; a < 3; a++)
        if (n[a] == 0)
            return 0;
    for (int a = 0; a < 3; a++) /* sort the three (stride, size) pairs */
        for (int c = a + 1; c < 3; c++)
            if (s[c] < s[a]) {
                int64_t x = s[a], y = n[a];
                s[a] = s[c], n[a] = n[c];
                s[c] = x, n[c] = y;
            }
    int64_t span = t->dim; /* elements [0, span) reached by the inner dims */
    for (int a = 0; a < 3; a++) {
        if (n[a] <= 1)
            continue;
        if (s[a] < span)
            return 1;
        /* saturates: an extent past INT64_MAX cannot hold another dim */
        int64_t ext;
        if (__builtin_mul_overflow(s[a], n[a] - 1, &ext) ||
            __builtin_add_overflow(ext, span, &span))
            span = INT64_MAX;
    }
    return 0;
}

/* Mask and bias share their shape rule: [B|1, Hq|1, T, S]. */
static int check_broadcast(const char *name, int64_t batch, int64_t heads,
                           int64_t rows, int64_t cols, int64_t sb, int64_t sh,
                           int64_t sr, const mattn__problem *p)
{
    if ((batch != 1 && batch != p->B) || (heads != 1 && heads != p->Hq) ||
        rows != p->T || cols != p->S)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "%s is [%lld, %lld, %lld, %lld] but must be "
                           "[%lld|1, %lld|1, %lld, %lld]",
                           name, (long long)batch, (long long)heads,
                           (long long)rows, (long long)cols, (long long)p->B,
                           (long long)p->Hq, (long long)p->T, (long long)p->S);
    if (sb < 0 || sh < 0 || sr < 0)
        return mattn__fail(MATTN_ERR_ARG, "%s has a negative stride", name);
    return MATTN_OK;
}

int mattn__resolve_threads(int requested)
{
    if (requested > 0)
        return requested;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int check_options(const mattn_options *o, int64_t D)
{
    if (!isfinite(o->scale))
        return mattn__fail(MATTN_ERR_ARG, "scale=%g is not finite", o->scale);
    if (!isfinite(o->softcap) || o->softcap < 0)
        return mattn__fail(MATTN_ERR_ARG,
                           "softcap=%g must be finite and >= 0 (0 = off)",
                           o->softcap);
    if (o->window_left < -1 || o->window_right < -1)
        return mattn__fail(MATTN_ERR_ARG,
                           "window (%lld, %lld) is below -1 (-1 = unbounded)",
                           (long long)o->window_left, (long long)o->window_right);
    if (o->window_left > OFFSET_MAX || o->window_right > OFFSET_MAX)
        return mattn__fail(MATTN_ERR_ARG, "window is too large");
    if (o->chunk < 0 || o->chunk > OFFSET_MAX)
        return mattn__fail(MATTN_ERR_ARG, "chunk=%lld must be >= 0 (0 = off)",
                           (long long)o->chunk);
    if (o->q_offset < -OFFSET_MAX || o->q_offset > OFFSET_MAX ||
        o->kv_offset < -OFFSET_MAX || o->kv_offset > OFFSET_MAX)
        return mattn__fail(MATTN_ERR_ARG, "q_offset/kv_offset beyond +-2^60");
    if (!(o->dropout_p >= 0.0f && o->dropout_p < 1.0f))
        return mattn__fail(MATTN_ERR_ARG, "dropout_p=%g is outside [0, 1)",
                           o->dropout_p);
    if (o->dropout_batch_offset < 0 || o->dropout_head_offset < 0)
        return mattn__fail(MATTN_ERR_ARG, "dropout batch/head offsets are negative");
    if ((o->q_segment_ids == NULL) != (o->kv_segment_ids == NULL))
        return mattn__fail(MATTN_ERR_ARG,
                           "q_segment_ids and kv_segment_ids must be given together");
    if (o->threads < 0)
        return mattn__fail(MATTN_ERR_ARG, "threads=%d is negative", o->threads);
    if (o->threads > MATTN__THREADS_MAX)
        return mattn__fail(MATTN_ERR_ARG, "threads=%d is above the limit %d", o->threads,
                           MATTN__THREADS_MAX);
    if (o->block_q < 0 || o->block_kv < 0 || o->block_q > 65536 ||
        o->block_kv > 65536)
        return mattn__fail(MATTN_ERR_ARG,
                           "block sizes (%d, %d) must be in [0, 65536]",
                           o->block_q, o->block_kv);
    (void)D;
    return MATTN_OK;
}

int mattn__problem_init(mattn__problem *p, const mattn_tensor *q,
                        const mattn_tensor *k, const mattn_tensor *v,
                        const mattn_tensor *o, float *lse,
                        const mattn_options *opts)
{
    int rc;
    memset(p, 0, sizeof *p);
    if (opts == NULL)
        return mattn__fail(MATTN_ERR_ARG, "options are NULL");
    if ((rc = check_tensor("q", q)) || (rc = check_tensor("k", k)) ||
        (rc = check_tensor("v", v)) || (rc = check_tensor("o", o)))
        return rc;
    if (k->batch != q->batch || v->batch != q->batch || o->batch != q->batch)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "batch sizes differ: q %lld, k %lld, v %lld, o %lld",
                           (long long)q->batch, (long long)k->batch,
                           (long long)v->batch, (long long)o->batch);
    if (v->seq != k->seq)
        return mattn__fail(MATTN_ERR_SHAPE, "k has %lld keys but v has %lld",
                           (long long)k->seq, (long long)v->seq);
    if (o->seq != q->seq)
        return mattn__fail(MATTN_ERR_SHAPE, "q has %lld rows but o has %lld",
                           (long long)q->seq, (long long)o->seq);
    if (v->heads != k->heads)
        return mattn__fail(MATTN_ERR_SHAPE, "k has %lld heads but v has %lld",
                           (long long)k->heads, (long long)v->heads);
    if (o->heads != q->heads)
        return mattn__fail(MATTN_ERR_SHAPE, "q has %lld heads but o has %lld",
                           (long long)q->heads, (long long)o->heads);
    if (q->heads % k->heads != 0)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "q_heads=%lld is not a multiple of kv_heads=%lld",
                           (long long)q->heads, (long long)k->heads);
    if (k->dim != q->dim)
        return mattn__fail(MATTN_ERR_SHAPE, "q head_dim %lld != k head_dim %lld",
                           (long long)q->dim, (long long)k->dim);
    if (o->dim != v->dim)
        return mattn__fail(MATTN_ERR_SHAPE, "o head_dim %lld != v head_dim %lld",
                           (long long)o->dim, (long long)v->dim);
    if (mattn__tensor_overlaps(o))
        return mattn__fail(MATTN_ERR_ARG,
                           "o strides (%lld, %lld, %lld) make output elements overlap",
                           (long long)o->stride_batch, (long long)o->stride_seq,
                           (long long)o->stride_head);
    if ((rc = check_options(opts, q->dim)))
        return rc;

    p->B = q->batch;
    p->T = q->seq;
    p->S = k->seq;
    p->Hq = q->heads;
    p->Hkv = k->heads;
    p->D = q->dim;
    p->Dv = v->dim;
    p->group = p->Hq / p->Hkv;
    p->q = q->data;
    p->q_sb = q->stride_batch, p->q_st = q->stride_seq, p->q_sh = q->stride_head;
    p->k = k->data;
    p->k_sb = k->stride_batch, p->k_ss = k->stride_seq, p->k_sh = k->stride_head;
    p->v = v->data;
    p->v_sb = v->stride_batch, p->v_ss = v->stride_seq, p->v_sh = v->stride_head;
    p->o = o->data;
    p->o_sb = o->stride_batch, p->o_st = o->stride_seq, p->o_sh = o->stride_head;
    p->lse = lse;
    p->lse_sh = p->T;
    p->lse_sb = p->Hq * p->T;

    p->scale = opts->scale != 0.0f ? opts->scale : (float)(1.0 / sqrt((double)p->D));
    p->softcap = opts->softcap;
    p->causal = opts->causal != 0;
    p->q_offset = opts->q_offset;
    p->kv_offset = opts->kv_offset;
    p->window_left = opts->window_left;
    p->window_right = opts->window_right;
    p->chunk = opts->chunk;

    if (opts->q_segment_ids) {
        p->q_seg = opts->q_segment_ids;
        p->kv_seg = opts->kv_segment_ids;
        p->q_seg_sb = p->T;
        p->kv_seg_sb = p->S;
    }
    if (opts->mask.data) {
        const mattn_mask *m = &opts->mask;
        if ((rc = check_broadcast("mask", m->batch, m->heads, m->rows, m->cols,
                                  m->stride_batch, m->stride_head, m->stride_row, p)))
            return rc;
        p->mask = m->data;
        p->mask_sb = m->batch == 1 ? 0 : m->stride_batch;
        p->mask_sh = m->heads == 1 ? 0 : m->stride_head;
        p->mask_st = m->stride_row;
    }
    if (opts->bias.data) {
        const mattn_bias *b = &opts->bias;
        if ((rc = check_broadcast("bias", b->batch, b->heads, b->rows, b->cols,
                                  b->stride_batch, b->stride_head, b->stride_row, p)))
            return rc;
        p->bias = b->data;
        p->bias_sb = b->batch == 1 ? 0 : b->stride_batch;
        p->bias_sh = b->heads == 1 ? 0 : b->stride_head;
        p->bias_st = b->stride_row;
    }
    if (opts->sinks) {
        for (int64_t h = 0; h < p->Hq; h++)
            if (isnan(opts->sinks[h]) || opts->sinks[h] == INFINITY)
                return mattn__fail(MATTN_ERR_ARG, "sinks[%lld]=%g is not a valid logit",
                                   (long long)h, opts->sinks[h]);
        p->sinks = opts->sinks;
    }

    p->dropout_p = opts->dropout_p;
    /* u24 / 2^24 >= p  <=>  u24 >= ceil(p * 2^24); exact in double. */
    p->dropout_threshold = (uint32_t)ceil((double)opts->dropout_p * 16777216.0);
    p->dropout_seed = opts->dropout_seed;
    p->dropout_b0 = opts->dropout_batch_offset;
    p->dropout_h0 = opts->dropout_head_offset;

    p->threads = mattn__resolve_threads(opts->threads);
    p->block_q = opts->block_q;
    p->block_kv = opts->block_kv;
    return MATTN_OK;
}

int mattn__tensor_check_like(const char *scope, const char *name, const mattn_tensor *t,
                             const char *like_name, const mattn_tensor *like, int output)
{
    if (t == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s is NULL", name);
    if (t->batch != like->batch || t->seq != like->seq || t->heads != like->heads ||
        t->dim != like->dim)
        return mattn__fail(MATTN_ERR_SHAPE,
                           "%s%s is [%lld, %lld, %lld, %lld] but %s%s is [%lld, %lld, %lld, %lld]",
                           scope, name, (long long)t->batch, (long long)t->seq,
                           (long long)t->heads, (long long)t->dim, scope, like_name,
                           (long long)like->batch, (long long)like->seq, (long long)like->heads,
                           (long long)like->dim);
    if (t->stride_batch < 0 || t->stride_seq < 0 || t->stride_head < 0)
        return mattn__fail(MATTN_ERR_ARG, "%s has a negative stride", name);
    if (t->batch * t->seq * t->heads > 0 && t->data == NULL)
        return mattn__fail(MATTN_ERR_ARG, "%s->data is NULL", name);
    if (output && mattn__tensor_overlaps(t))
        return mattn__fail(MATTN_ERR_ARG, "%s strides (%lld, %lld, %lld) make elements overlap",
                           name, (long long)t->stride_batch, (long long)t->stride_seq,
                           (long long)t->stride_head);
    return MATTN_OK;
}
