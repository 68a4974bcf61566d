/* What the vanilla and flash backward kernels do around their main loop:
 * D_i = rowsum(dO*O), the sink gradients, and dbias bookkeeping. */
#include <math.h>
#include <string.h>

#include "core/parallel.h"
#include "core/scratch.h"
#include "core/status.h"
#include "kernels/kernels_bwd.h"

typedef struct delta_ctx {
    const mattn__problem *p;
    const mattn__grad *g;
    float *delta; /* [B, Hq, T] dense */
} delta_ctx;

/* D_i for one (batch, q head): a Dv-term dot product per row, in double
 * (four chains, so it is not latency-bound): it is O(T Dv) beside the
 * kernels' O(T S D), and it is the term that dS = P*(dP - D) cancels
 * against, so it should carry no more error than its fp32 inputs. */
static void delta_task(void *vctx, int64_t task, int worker)
{
    (void)worker;
    const delta_ctx *c = vctx;
    const mattn__problem *p = c->p;
    const mattn__grad *g = c->g;
    int64_t b = task / p->Hq, h = task % p->Hq;
    for (int64_t t = 0; t < p->T; t++) {
        const float *o = p->o + b * p->o_sb + t * p->o_st + h * p->o_sh;
        const float *d = g->dout + b * g->do_sb + t * g->do_st + h * g->do_sh;
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
        int64_t x = 0;
        for (; x + 4 <= p->Dv; x += 4) {
            a0 += (double)o[x] * d[x];
            a1 += (double)o[x + 1] * d[x + 1];
            a2 += (double)o[x + 2] * d[x + 2];
            a3 += (double)o[x + 3] * d[x + 3];
        }
        for (; x < p->Dv; x++)
            a0 += (double)o[x] * d[x];
        c->delta[(b * p->Hq + h) * p->T + t] = (float)((a0 + a1) + (a2 + a3));
    }
}

int mattn__bwd_prepare(const mattn__problem *p, const mattn__grad *g, int threads,
                       mattn__bwd_prep *prep)
{
    memset(prep, 0, sizeof *prep);
    prep->threads = threads < 1 ? 1 : threads;

    if (g->delta) {
        prep->delta = g->delta;
        prep->delta_sb = g->delta_sb;
        prep->delta_sh = g->delta_sh;
    } else {
        size_t n = (size_t)(p->B * p->Hq * p->T);
        prep->delta_buf = mattn__scratch_get(sizeof(float) * (n ? n : 1));
        if (prep->delta_buf == NULL)
            return mattn__fail(MATTN_ERR_NOMEM, "backward: cannot allocate D_i (%zu floats)", n);
        delta_ctx c = {.p = p, .g = g, .delta = prep->delta_buf};
        mattn__parallel_for(prep->threads, p->B * p->Hq, delta_task, &c);
        prep->delta = prep->delta_buf;
        prep->delta_sb = p->Hq * p->T;
        prep->delta_sh = p->T;
    }

    if (g->dsinks) {
        /* dsink_h = -sum_{b,i} P_sink,i D_i with P_sink,i = exp(sink_h - lse_i):
         * the sink is one more logit with dP = 0 (it has no value), so its
         * dS is P_sink (0 - D_i). Rows with lse = -inf (no key, no sink)
         * contribute nothing; in double, as the sum runs over B*T rows. */
        for (int64_t h = 0; h < p->Hq; h++) {
            double acc = 0.0, sink = p->sinks ? p->sinks[h] : -INFINITY;
            for (int64_t b = 0; b < p->B && sink > -INFINITY; b++)
                for (int64_t t = 0; t < p->T; t++) {
                    double lse = p->lse[b * p->lse_sb + h * p->lse_sh + t];
                    if (lse > -INFINITY)
                        acc += exp(sink - lse) *
                               prep->delta[b * prep->delta_sb + h * prep->delta_sh + t];
                }
            g->dsinks[h] = (float)((g->accumulate ? (double)g->dsinks[h] : 0.0) - acc);
        }
    }

    prep->dbias = prep->dbias_one;
    if (g->dbias) {
        int64_t nb = g->dbias_sb ? p->B : 1, nh = g->dbias_sh ? p->Hq : 1;
        if (!g->accumulate)
            for (int64_t b = 0; b < nb; b++)
                for (int64_t h = 0; h < nh; h++)
                    for (int64_t t = 0; t < p->T; t++)
                        memset(g->dbias + b * g->dbias_sb + h * g->dbias_sh + t * g->dbias_st,
                               0, sizeof(float) * (size_t)p->S);
        int shared = (g->dbias_sb == 0 && p->B > 1) || (g->dbias_sh == 0 && p->Hkv > 1);
        if (shared && prep->threads > 1) {
            /* Workers 1.. add into private zeroed copies, summed at the end. */
            size_t one = (size_t)(nb * nh * p->T * p->S);
            size_t views = sizeof(mattn__dbias_view) * (size_t)prep->threads;
            prep->dbias = mattn__scratch_get(views);
            prep->dbias_buf =
                mattn__scratch_get(sizeof(float) * (one * (size_t)(prep->threads - 1) + 1));
            if (prep->dbias == NULL || prep->dbias_buf == NULL) {
                mattn__scratch_put(prep->dbias);
                mattn__scratch_put(prep->dbias_buf);
                prep->dbias = prep->dbias_one;
                prep->dbias_buf = NULL;
                return mattn__fail(MATTN_ERR_NOMEM,
                                   "backward: cannot allocate %d private dbias copies",
                                   prep->threads - 1);
            }
            memset(prep->dbias_buf, 0, sizeof(float) * one * (size_t)(prep->threads - 1));
            for (int w = 1; w < prep->threads; w++)
                prep->dbias[w] = (mattn__dbias_view){
                    .data = prep->dbias_buf + one * (size_t)(w - 1),
                    .sb = g->dbias_sb ? nh * p->T * p->S : 0,
                    .sh = g->dbias_sh ? p->T * p->S : 0,
                    .st = p->S,
                };
            prep->dbias[0] = (mattn__dbias_view){g->dbias, g->dbias_sb, g->dbias_sh,
                                                 g->dbias_st};
        } else {
            /* Every entry has one owner task, or there is one worker. */
            prep->dbias_one[0] = (mattn__dbias_view){g->dbias, g->dbias_sb, g->dbias_sh,
                                                     g->dbias_st};
        }
    }
    return MATTN_OK;
}

void mattn__bwd_finish(const mattn__problem *p, const mattn__grad *g, mattn__bwd_prep *prep)
{
    if (prep->dbias_buf) {
        int64_t nb = g->dbias_sb ? p->B : 1, nh = g->dbias_sh ? p->Hq : 1;
        for (int w = 1; w < prep->threads; w++) {
            const mattn__dbias_view *src = &prep->dbias[w];
            for (int64_t b = 0; b < nb; b++)
                for (int64_t h = 0; h < nh; h++)
                    for (int64_t t = 0; t < p->T; t++) {
                        float *d = g->dbias + b * g->dbias_sb + h * g->dbias_sh + t * g->dbias_st;
                        const float *s = src->data + b * src->sb + h * src->sh + t * src->st;
                        for (int64_t j = 0; j < p->S; j++)
                            d[j] += s[j];
                    }
        }
        mattn__scratch_put(prep->dbias_buf);
    }
    if (prep->dbias && prep->dbias != prep->dbias_one)
        mattn__scratch_put(prep->dbias);
    mattn__scratch_put(prep->delta_buf);
    memset(prep, 0, sizeof *prep);
}

void mattn__bwd_store_rows(float *dst, int64_t dst_stride, const float *src,
                           int64_t src_stride, int64_t n, int64_t dim, float alpha,
                           int accumulate)
{
    for (int64_t r = 0; r < n; r++) {
        float *d = dst + r * dst_stride;
        const float *s = src + r * src_stride;
        if (accumulate)
            for (int64_t x = 0; x < dim; x++)
                d[x] += alpha * s[x];
        else
            for (int64_t x = 0; x < dim; x++)
                d[x] = alpha * s[x];
    }
}

int mattn__bwd_empty(const mattn__problem *p, const mattn__grad *g)
{
    mattn__bwd_prep prep;
    int rc = mattn__bwd_prepare(p, g, 1, &prep);
    mattn__bwd_finish(p, g, &prep);
    return rc;
}
