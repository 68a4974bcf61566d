/* The step both blockwise backward kernels share (see block_bwd.h). */
#include "kernels/block_bwd.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "core/parallel.h"
#include "core/scratch.h"
#include "kernels/blockwise.h"
#include "kernels/rows_bwd.h"

size_t mattn__bwd_ws_layout(const mattn__problem *p, const mattn__bwd_ws_shape *s, char *base,
                            mattn__bwd_ws *w)
{
    size_t prow = (size_t)s->prow, rows = (size_t)s->rows_max, bkv = (size_t)s->bkv,
           D = (size_t)p->D, Dv = (size_t)p->Dv;
    size_t kbuf_n = mattn__blas_rows_ok(p->k_ss, p->D) ? 0 : bkv * D;
    size_t vbuf_n = mattn__blas_rows_ok(p->v_ss, p->Dv) ? 0 : bkv * Dv;
    mattn__carver cv = {base, 0};
    mattn__bwd_ws sizing;
    if (w == NULL)
        w = &sizing;
    w->q = mattn__carve(&cv, sizeof *w->q, prow * D);
    w->dout = mattn__carve(&cv, sizeof *w->dout, prow * Dv);
    w->dq = mattn__carve(&cv, sizeof *w->dq, s->nsplit > 1 ? 0 : prow * D);
    w->lse = mattn__carve(&cv, sizeof *w->lse, prow);
    w->delta = mattn__carve(&cv, sizeof *w->delta, prow);
    w->row = mattn__carve(&cv, sizeof *w->row, prow);
    w->active = mattn__carve(&cv, sizeof *w->active, rows);
    w->s = mattn__carve(&cv, sizeof *w->s, rows * bkv);
    w->dp = mattn__carve(&cv, sizeof *w->dp, rows * bkv);
    w->w = mattn__carve(&cv, sizeof *w->w, p->dropout_p > 0.0f ? rows * bkv : 0);
    w->capf = mattn__carve(&cv, sizeof *w->capf, p->softcap > 0.0f ? rows * bkv : 0);
    w->dk = mattn__carve(&cv, sizeof *w->dk, bkv * D);
    w->dv = mattn__carve(&cv, sizeof *w->dv, bkv * Dv);
    w->kbuf = mattn__carve(&cv, sizeof *w->kbuf, kbuf_n);
    w->vbuf = mattn__carve(&cv, sizeof *w->vbuf, vbuf_n);
    /* one kernel's own pieces; NULL tells the shared step a piece is absent */
    w->qb_lo = s->nqb > 0 ? mattn__carve(&cv, sizeof *w->qb_lo, (size_t)s->nqb) : NULL;
    w->qb_hi = s->nqb > 0 ? mattn__carve(&cv, sizeof *w->qb_hi, (size_t)s->nqb) : NULL;
    w->tile = s->tiles > 0 ? mattn__carve(&cv, sizeof *w->tile, (size_t)s->tiles) : NULL;
    w->cur = s->ncur > 0 ? mattn__carve(&cv, sizeof *w->cur, (size_t)s->ncur) : NULL;
    w->state = s->nstate > 0 ? mattn__carve(&cv, sizeof *w->state, (size_t)s->nstate) : NULL;
    return cv.off;
}

void mattn__bwd_gather_rows(const mattn__problem *p, const mattn__grad *g,
                            const mattn__bwd_prep *prep, mattn__bwd_ws *w, int64_t b,
                            int64_t hk, int64_t t0, int64_t tn)
{
    const int64_t G = p->group, D = p->D, Dv = p->Dv;
    for (int64_t tt = 0; tt < tn; tt++)
        for (int64_t gi = 0; gi < G; gi++) {
            int64_t r = tt * G + gi, h = hk * G + gi, t = t0 + tt;
            const float *src = p->q + b * p->q_sb + t * p->q_st + h * p->q_sh;
            float *dst = w->q + r * D;
            for (int64_t d = 0; d < D; d++)
                dst[d] = src[d] * p->scale;
            memcpy(w->dout + r * Dv, g->dout + b * g->do_sb + t * g->do_st + h * g->do_sh,
                   sizeof(float) * (size_t)Dv);
            w->lse[r] = p->lse[b * p->lse_sb + h * p->lse_sh + t];
            w->delta[r] = prep->delta[b * prep->delta_sb + h * prep->delta_sh + t];
            mattn__row_init(p, b, h, t, &w->row[r]);
            /* lse = -inf: no key and no sink; zero gradients, and
             * exp(s - lse) must never be formed. */
            if (w->lse[r] == -INFINITY)
                w->row[r].hi = w->row[r].lo;
        }
}

void mattn__bwd_block_pair(const mattn__problem *p, const mattn__vecmath *vm, mattn__bwd_ws *w,
                           int64_t bkv, const mattn__dbias_view *dbias, int64_t b, int64_t hk,
                           int64_t t0, int64_t r0, int64_t rn, int64_t j0, int64_t jn,
                           const float *kb, int64_t ldk, const float *vb, int64_t ldv,
                           float *dq)
{
    const int64_t G = p->group, D = p->D, Dv = p->Dv;
    const int dropout = p->dropout_p > 0.0f, cap = p->softcap > 0.0f;
    const float *q = w->q + r0 * D, *dout = w->dout + r0 * Dv;

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rn, (int)jn, (int)D, 1.0f, q,
                (int)D, kb, (int)ldk, 0.0f, w->s, (int)bkv);
    for (int64_t r = 0; r < rn; r++) {
        float *s = w->s + r * bkv;
        if (!w->active[r]) {
            memset(s, 0, sizeof(float) * (size_t)jn);
            if (dropout)
                memset(w->w + r * bkv, 0, sizeof(float) * (size_t)jn);
            continue;
        }
        mattn__bwd_row_probs_tile(p, vm, &w->row[r0 + r], w->lse[r0 + r], s,
                                  cap ? w->capf + r * bkv : NULL,
                                  dropout ? w->w + r * bkv : NULL, j0, jn, w->tile ? w->tile[r] : NULL);
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)jn, (int)Dv, (int)rn, 1.0f,
                dropout ? w->w : w->s, (int)bkv, dout, (int)Dv, 1.0f, w->dv, (int)Dv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rn, (int)jn, (int)Dv, 1.0f, dout,
                (int)Dv, vb, (int)ldv, 0.0f, w->dp, (int)bkv);
    for (int64_t r = 0; r < rn; r++) {
        float *dp = w->dp + r * bkv;
        if (!w->active[r]) {
            memset(dp, 0, sizeof(float) * (size_t)jn);
            continue;
        }
        float *db = NULL;
        if (dbias->data) {
            int64_t row = r0 + r, t = t0 + row / G, h = hk * G + row % G;
            db = dbias->data + b * dbias->sb + h * dbias->sh + t * dbias->st + j0;
        }
        mattn__bwd_row_dscore(w->s + r * bkv, dropout ? w->w + r * bkv : NULL,
                              cap ? w->capf + r * bkv : NULL, w->delta[r0 + r], dp, db, jn);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rn, (int)D, (int)jn, 1.0f,
                w->dp, (int)bkv, kb, (int)ldk, 1.0f, dq + r0 * D, (int)D);
    /* dK = scale dx^T Q = dx^T (scale Q): the panel holds scaled rows. */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)jn, (int)D, (int)rn, 1.0f, w->dp,
                (int)bkv, q, (int)D, 1.0f, w->dk, (int)D);
}

/* Aim for at least this many tasks per thread before splitting kv ranges,
 * but never let the dQ partials of the split take more than ~256 MiB (they
 * cost nsplit x |q|: with MQA at long T, fewer splits and idle threads beat
 * gigabytes of partials). */
#define BWD_TASKS_PER_THREAD 4
#define BWD_PARTIAL_FLOATS ((int64_t)64 << 20)

int64_t mattn__bwd_nsplit(const mattn__problem *p, int64_t nkb)
{
    int64_t nbh = p->B * p->Hkv, nsplit = 1;
    if (p->threads > 1 && nbh > 0 && nbh < (int64_t)BWD_TASKS_PER_THREAD * p->threads) {
        nsplit = ((int64_t)BWD_TASKS_PER_THREAD * p->threads + nbh - 1) / nbh;
        if (nsplit > nkb)
            nsplit = nkb > 0 ? nkb : 1;
        int64_t per_split = nbh * p->T * p->group * p->D;
        if (per_split > 0 && nsplit * per_split > BWD_PARTIAL_FLOATS)
            nsplit = BWD_PARTIAL_FLOATS / per_split;
        if (nsplit < 1)
            nsplit = 1;
    }
    return nsplit;
}

#define BWD_REDUCE_CHUNK 256 /* positions per reduction task */

typedef struct reduce_ctx {
    const mattn__problem *p;
    const mattn__grad *g;
    const float *dq_part;
    int64_t nsplit;
} reduce_ctx;

/* One (b, hk, chunk of positions) of mattn__bwd_reduce_dq. */
static void reduce_task(void *vctx, int64_t task, int worker)
{
    (void)worker;
    const reduce_ctx *c = vctx;
    const mattn__problem *p = c->p;
    const mattn__grad *g = c->g;
    const int64_t G = p->group, D = p->D;
    int64_t nchunk = (p->T + BWD_REDUCE_CHUNK - 1) / BWD_REDUCE_CHUNK;
    int64_t bh = task / nchunk, t0 = task % nchunk * BWD_REDUCE_CHUNK;
    int64_t t1 = t0 + BWD_REDUCE_CHUNK < p->T ? t0 + BWD_REDUCE_CHUNK : p->T;
    int64_t b = bh / p->Hkv, hk = bh % p->Hkv;
    size_t part = (size_t)(p->B * p->Hkv * p->T * G * D);
    for (int64_t t = t0; t < t1; t++)
        for (int64_t gi = 0; gi < G; gi++) {
            const float *src = c->dq_part + (bh * p->T + t) * G * D + gi * D;
            float *dst = g->dq + b * g->dq_sb + t * g->dq_st + (hk * G + gi) * g->dq_sh;
            for (int64_t d = 0; d < D; d++) {
                float sum = src[d];
                for (int64_t s = 1; s < c->nsplit; s++)
                    sum += src[(size_t)s * part + (size_t)d];
                dst[d] = g->accumulate ? dst[d] + p->scale * sum : p->scale * sum;
            }
        }
}

void mattn__bwd_reduce_dq(const mattn__problem *p, const mattn__grad *g, const float *dq_part,
                          int64_t nsplit, int threads)
{
    reduce_ctx c = {.p = p, .g = g, .dq_part = dq_part, .nsplit = nsplit};
    int64_t nchunk = (p->T + BWD_REDUCE_CHUNK - 1) / BWD_REDUCE_CHUNK;
    mattn__parallel_for(threads, p->B * p->Hkv * nchunk, reduce_task, &c);
}
