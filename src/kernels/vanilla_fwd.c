/* Vanilla attention forward: the readable reference.
 *
 * Shapes as flash (see flash_fwd.c). For each (batch b, q head h) it
 * materialises the logits of a panel of query rows against all S keys,
 *   L = scale q K^T  (sgemm),  then per row: cap, bias, mask (rows.c),
 *   w = softmax(L) with the sink as one extra logit, lse = m + log l,
 *   weights out (before dropout), dropout, o = w V (sgemm).
 * Rows are processed in panels only to bound memory; nothing is online. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "core/parallel.h"
#include "core/scratch.h"
#include "core/status.h"
#include "kernels/kernels.h"
#include "kernels/blockwise.h"
#include "kernels/rows.h"

/* Logit panel of at most ~16 MiB per worker. */
#define VANILLA_PANEL_FLOATS ((int64_t)4 << 20)

typedef struct vanilla_ctx {
    const mattn__problem *p;
    const mattn__vecmath *vm;
    float *weights; /* [B, Hq, T, S] or NULL */
    int64_t panel;  /* query rows per panel */
    char **ws;
} vanilla_ctx;

/* Softmax of one row of logits in place, the sink counted as one more
 * logit with no value; returns lse. A row with nothing allowed (max -inf,
 * no sink) becomes all zeros with lse -inf. */
static float softmax_row(float *s, int64_t n, float sink)
{
    float m = sink;
    for (int64_t j = 0; j < n; j++)
        m = s[j] > m ? s[j] : m;
    if (m == -INFINITY) {
        memset(s, 0, sizeof(float) * (size_t)n);
        return -INFINITY;
    }
    double l = sink > -INFINITY ? exp((double)(sink - m)) : 0.0;
    for (int64_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - m);
        l += s[j];
    }
    float inv = (float)(1.0 / l);
    for (int64_t j = 0; j < n; j++)
        s[j] *= inv;
    return m + (float)log(l);
}

static void vanilla_task(void *vctx, int64_t task, int worker)
{
    const vanilla_ctx *c = vctx;
    const mattn__problem *p = c->p;
    const int64_t S = p->S, D = p->D, Dv = p->Dv;
    int64_t b = task / p->Hq, h = task % p->Hq, hk = h / p->group;
    float *panel = (float *)c->ws[worker];
    float *qbuf = panel + c->panel * S;
    float *obuf = qbuf + c->panel * D;
    const float *k = p->k + b * p->k_sb + hk * p->k_sh;
    const float *v = p->v + b * p->v_sb + hk * p->v_sh;
    int64_t ldk = p->k_ss, ldv = p->v_ss;
    /* Sequence strides below the row length (e.g. 0, a broadcast) or beyond
     * an int are not BLAS-addressable: gather K and V into dense rows first. */
    float *dense = obuf + c->panel * Dv;
    if (!mattn__blas_rows_ok(ldk, D)) {
        for (int64_t j = 0; j < S; j++)
            memcpy(dense + j * D, k + j * ldk, sizeof(float) * (size_t)D);
        k = dense, ldk = D;
        dense += S * D;
    }
    if (!mattn__blas_rows_ok(ldv, Dv)) {
        for (int64_t j = 0; j < S; j++)
            memcpy(dense + j * Dv, v + j * ldv, sizeof(float) * (size_t)Dv);
        v = dense, ldv = Dv;
    }
    float sink = p->sinks ? p->sinks[h] : -INFINITY;

    for (int64_t i0 = 0; i0 < p->T; i0 += c->panel) {
        int64_t n = c->panel < p->T - i0 ? c->panel : p->T - i0;
        /* Gather the panel's q rows (any strides) into a dense matrix. */
        for (int64_t i = 0; i < n; i++)
            memcpy(qbuf + i * D, p->q + b * p->q_sb + (i0 + i) * p->q_st + h * p->q_sh,
                   sizeof(float) * (size_t)D);
        if (S > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)S, (int)D,
                        p->scale, qbuf, (int)D, k, (int)ldk, 0.0f, panel, (int)S);
        for (int64_t i = 0; i < n; i++) {
            float *s = panel + i * S;
            mattn__row row;
            mattn__row_init(p, b, h, i0 + i, &row);
            mattn__row_logits(p, c->vm, &row, s, 0, S);
            float lse = softmax_row(s, S, sink);
            if (p->lse)
                p->lse[b * p->lse_sb + h * p->lse_sh + i0 + i] = lse;
            if (c->weights)
                memcpy(c->weights + ((b * p->Hq + h) * p->T + i0 + i) * S, s,
                       sizeof(float) * (size_t)S);
            if (p->dropout_p > 0.0f)
                mattn__row_dropout(p, c->vm, &row, s, 0, S);
        }
        if (S > 0)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)Dv, (int)S,
                        1.0f, panel, (int)S, v, (int)ldv, 0.0f, obuf, (int)Dv);
        else
            memset(obuf, 0, sizeof(float) * (size_t)(n * Dv));
        for (int64_t i = 0; i < n; i++)
            memcpy(p->o + b * p->o_sb + (i0 + i) * p->o_st + h * p->o_sh, obuf + i * Dv,
                   sizeof(float) * (size_t)Dv);
    }
}

int mattn__vanilla_forward_kernel(const mattn__problem *p, float *weights)
{
    if (p->B == 0 || p->T == 0)
        return MATTN_OK;
    vanilla_ctx c = {.p = p, .vm = mattn__vecmath_get(), .weights = weights};
    int64_t S = p->S > 0 ? p->S : 1;
    c.panel = VANILLA_PANEL_FLOATS / S;
    if (c.panel < 1)
        c.panel = 1;
    if (c.panel > p->T)
        c.panel = p->T;
    int64_t dense = (mattn__blas_rows_ok(p->k_ss, p->D) ? 0 : S * p->D) +
                    (mattn__blas_rows_ok(p->v_ss, p->Dv) ? 0 : S * p->Dv);
    size_t bytes = sizeof(float) * (size_t)(c.panel * (S + p->D + p->Dv) + dense);
    int64_t ntasks = p->B * p->Hq;
    int threads = p->threads < ntasks ? p->threads : (int)ntasks;

    char *ws[threads];
    int rc = MATTN_OK, got = 0;
    got = mattn__scratch_get_each(ws, threads, bytes);
    if (got == 0) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "vanilla: cannot allocate %zu bytes", bytes);
        goto done;
    }
    c.ws = ws;
    mattn__blas_hold();
    mattn__parallel_for(threads, ntasks, vanilla_task, &c);
    mattn__blas_release();
done:
    mattn__scratch_put_each(ws, got);
    return rc;
}
