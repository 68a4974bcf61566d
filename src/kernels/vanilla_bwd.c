/* Vanilla attention backward: the readable reference.
 *
 * Shapes: q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv], o and dO
 * [B, T, Hq, Dv], lse [B, Hq, T] (any strides; head_dim contiguous).
 *
 * One task is (batch b, kv head hk): it owns dk and dv of that head, which
 * sums over the q heads of its group, in fp32 accumulators [S, D], [S, Dv].
 * For each q head of the group and each panel of query rows it materialises
 * full rows of logits against all S keys:
 *   L  = (scale q) K^T                         sgemm [n, D] x [D, S]
 *   P  = exp(finish(L) - lse),  W = P*Z        rows_bwd.c
 *   dV += W^T dO                               sgemm [S, n] x [n, Dv]
 *   dW = dO V^T                                sgemm [n, Dv] x [Dv, S]
 *   dS = W*dW - P D,  dbias += dS,  dx = f*dS  rows_bwd.c
 *   dq = scale dx K                            sgemm [n, S] x [S, D]
 *   dK += dx^T (scale q)                       sgemm [S, n] x [n, D]
 * Panels only bound memory; flash_bwd.c is the same algorithm blocked over
 * keys too. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "core/parallel.h"
#include "core/scratch.h"
#include "core/status.h"
#include "kernels/kernels_bwd.h"
#include "kernels/rows.h"
#include "kernels/rows_bwd.h"

/* At most ~4 MiB per [panel, S] buffer (up to four of them per worker). */
#define VANILLA_BWD_PANEL_FLOATS ((int64_t)1 << 20)

typedef struct vbwd_ctx {
    const mattn__problem *p;
    const mattn__grad *g;
    const mattn__bwd_prep *prep;
    const mattn__vecmath *vm;
    int64_t panel;
    int dense_k, dense_v; /* K / V rows not BLAS-addressable: gather them */
    char **ws;
} vbwd_ctx;

typedef struct vbwd_ws {
    float *dk, *dv;       /* [S, D], [S, Dv] accumulators of this kv head */
    float *k, *v;         /* dense K, V when needed */
    float *q, *dout, *dq; /* [panel, D], [panel, Dv], [panel, D] */
    float *s, *dp, *w, *capf; /* [panel, S]; w with dropout, capf with the cap */
    float *lse, *delta;   /* [panel] */
} vbwd_ws;

/* With w NULL only sizes the workspace. */
static size_t vbwd_layout(const vbwd_ctx *c, char *base, vbwd_ws *w)
{
    const mattn__problem *p = c->p;
    size_t n = (size_t)c->panel, S = (size_t)p->S, D = (size_t)p->D, Dv = (size_t)p->Dv;
    mattn__carver cv = {base, 0};
    vbwd_ws sizing;
    if (w == NULL)
        w = &sizing;
    w->dk = mattn__carve(&cv, sizeof *w->dk, S * D);
    w->dv = mattn__carve(&cv, sizeof *w->dv, S * Dv);
    w->k = mattn__carve(&cv, sizeof *w->k, c->dense_k ? S * D : 0);
    w->v = mattn__carve(&cv, sizeof *w->v, c->dense_v ? S * Dv : 0);
    w->q = mattn__carve(&cv, sizeof *w->q, n * D);
    w->dout = mattn__carve(&cv, sizeof *w->dout, n * Dv);
    w->dq = mattn__carve(&cv, sizeof *w->dq, n * D);
    w->s = mattn__carve(&cv, sizeof *w->s, n * S);
    w->dp = mattn__carve(&cv, sizeof *w->dp, n * S);
    w->w = mattn__carve(&cv, sizeof *w->w, p->dropout_p > 0.0f ? n * S : 0);
    w->capf = mattn__carve(&cv, sizeof *w->capf, p->softcap > 0.0f ? n * S : 0);
    w->lse = mattn__carve(&cv, sizeof *w->lse, n);
    w->delta = mattn__carve(&cv, sizeof *w->delta, n);
    return cv.off;
}

static void vbwd_panel(const vbwd_ctx *c, vbwd_ws *w, int64_t b, int64_t h, int64_t i0,
                       int64_t n, const float *k, int64_t ldk, const float *v, int64_t ldv,
                       const mattn__dbias_view *dbias)
{
    const mattn__problem *p = c->p;
    const mattn__grad *g = c->g;
    const int64_t S = p->S, D = p->D, Dv = p->Dv;
    const int dropout = p->dropout_p > 0.0f, cap = p->softcap > 0.0f;

    for (int64_t i = 0; i < n; i++) {
        const float *src = p->q + b * p->q_sb + (i0 + i) * p->q_st + h * p->q_sh;
        for (int64_t d = 0; d < D; d++)
            w->q[i * D + d] = src[d] * p->scale;
        memcpy(w->dout + i * Dv, g->dout + b * g->do_sb + (i0 + i) * g->do_st + h * g->do_sh,
               sizeof(float) * (size_t)Dv);
        w->lse[i] = p->lse[b * p->lse_sb + h * p->lse_sh + i0 + i];
        w->delta[i] = c->prep->delta[b * c->prep->delta_sb + h * c->prep->delta_sh + i0 + i];
    }
    if (S == 0) {
        memset(w->dq, 0, sizeof(float) * (size_t)(n * D));
        goto store_dq;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)S, (int)D, 1.0f, w->q,
                (int)D, k, (int)ldk, 0.0f, w->s, (int)S);

    for (int64_t i = 0; i < n; i++) {
        mattn__row row;
        mattn__row_init(p, b, h, i0 + i, &row);
        float *s = w->s + i * S;
        /* lse = -inf: nothing was allowed (and no sink): zero gradients. */
        if (w->lse[i] == -INFINITY || row.lo >= row.hi) {
            w->lse[i] = -INFINITY;
            memset(s, 0, sizeof(float) * (size_t)S);
            if (dropout)
                memset(w->w + i * S, 0, sizeof(float) * (size_t)S);
            continue;
        }
        mattn__bwd_row_probs(p, c->vm, &row, w->lse[i], s, cap ? w->capf + i * S : NULL,
                             dropout ? w->w + i * S : NULL, 0, S);
    }
    const float *W = dropout ? w->w : w->s;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)S, (int)Dv, (int)n, 1.0f, W,
                (int)S, w->dout, (int)Dv, 1.0f, w->dv, (int)Dv);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)S, (int)Dv, 1.0f,
                w->dout, (int)Dv, v, (int)ldv, 0.0f, w->dp, (int)S);
    for (int64_t i = 0; i < n; i++) {
        float *dp = w->dp + i * S;
        if (w->lse[i] == -INFINITY) {
            memset(dp, 0, sizeof(float) * (size_t)S);
            continue;
        }
        float *db = dbias->data ? dbias->data + b * dbias->sb + h * dbias->sh +
                                      (i0 + i) * dbias->st
                                : NULL;
        mattn__bwd_row_dscore(w->s + i * S, dropout ? w->w + i * S : NULL,
                              cap ? w->capf + i * S : NULL, w->delta[i], dp, db, S);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)D, (int)S, 1.0f, w->dp,
                (int)S, k, (int)ldk, 0.0f, w->dq, (int)D);
    /* dk = scale dx^T q = dx^T (scale q): the scaled rows are already here. */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)S, (int)D, (int)n, 1.0f, w->dp,
                (int)S, w->q, (int)D, 1.0f, w->dk, (int)D);
store_dq:
    mattn__bwd_store_rows(g->dq + b * g->dq_sb + i0 * g->dq_st + h * g->dq_sh, g->dq_st,
                          w->dq, D, n, D, p->scale, g->accumulate);
}

static void vbwd_task(void *vctx, int64_t task, int worker)
{
    const vbwd_ctx *c = vctx;
    const mattn__problem *p = c->p;
    const mattn__grad *g = c->g;
    const int64_t S = p->S, D = p->D, Dv = p->Dv;
    int64_t b = task / p->Hkv, hk = task % p->Hkv;
    vbwd_ws w;
    vbwd_layout(c, c->ws[worker], &w);

    const float *k = p->k + b * p->k_sb + hk * p->k_sh;
    const float *v = p->v + b * p->v_sb + hk * p->v_sh;
    int64_t ldk = p->k_ss, ldv = p->v_ss;
    if (c->dense_k) {
        for (int64_t j = 0; j < S; j++)
            memcpy(w.k + j * D, k + j * ldk, sizeof(float) * (size_t)D);
        k = w.k, ldk = D;
    }
    if (c->dense_v) {
        for (int64_t j = 0; j < S; j++)
            memcpy(w.v + j * Dv, v + j * ldv, sizeof(float) * (size_t)Dv);
        v = w.v, ldv = Dv;
    }
    memset(w.dk, 0, sizeof(float) * (size_t)(S * D));
    memset(w.dv, 0, sizeof(float) * (size_t)(S * Dv));

    const mattn__dbias_view *dbias = mattn__bwd_dbias_view(c->prep, worker);
    for (int64_t gi = 0; gi < p->group; gi++)
        for (int64_t i0 = 0; i0 < p->T; i0 += c->panel) {
            int64_t n = c->panel < p->T - i0 ? c->panel : p->T - i0;
            vbwd_panel(c, &w, b, hk * p->group + gi, i0, n, k, ldk, v, ldv, dbias);
        }

    mattn__bwd_store_rows(g->dk + b * g->dk_sb + hk * g->dk_sh, g->dk_ss, w.dk, D, S, D, 1.0f,
                          g->accumulate);
    mattn__bwd_store_rows(g->dv + b * g->dv_sb + hk * g->dv_sh, g->dv_ss, w.dv, Dv, S, Dv, 1.0f,
                          g->accumulate);
}

int mattn__vanilla_backward_kernel(const mattn__problem *p, const mattn__grad *g)
{
    if (p->B == 0)
        return mattn__bwd_empty(p, g);
    vbwd_ctx c = {.p = p, .g = g, .vm = mattn__vecmath_get()};
    int64_t S = p->S > 0 ? p->S : 1;
    c.panel = VANILLA_BWD_PANEL_FLOATS / S;
    if (c.panel > p->T)
        c.panel = p->T;
    if (c.panel < 1)
        c.panel = 1;
    c.dense_k = p->k_ss < p->D || p->k_ss > INT32_MAX;
    c.dense_v = p->v_ss < p->Dv || p->v_ss > INT32_MAX;
    size_t bytes = vbwd_layout(&c, NULL, NULL);
    int64_t ntasks = p->B * p->Hkv;
    int threads = p->threads < ntasks ? p->threads : (int)(ntasks > 0 ? ntasks : 1);

    mattn__bwd_prep prep;
    char *ws[threads];
    int got = 0;
    int rc = mattn__bwd_prepare(p, g, threads, &prep);
    if (rc)
        goto done;
    got = mattn__scratch_get_each(ws, threads, bytes);
    if (got == 0) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "vanilla backward: cannot allocate %zu bytes",
                         bytes);
        goto done;
    }
    c.prep = &prep;
    c.ws = ws;
    mattn__blas_hold();
    mattn__parallel_for(threads, ntasks, vbwd_task, &c);
    mattn__blas_release();
done:
    mattn__scratch_put_each(ws, got);
    mattn__bwd_finish(p, g, &prep);
    return rc;
}
