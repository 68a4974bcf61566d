/* Flash attention backward: blockwise, probabilities recomputed from lse.
 *
 * Shapes: q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv], o and dO
 * [B, T, Hq, Dv], lse and D_i [B, Hq, T] (any strides, head_dim contiguous).
 *
 * Work split (FlashAttention-2 style, kv-outer): one task is (batch b, kv
 * head hk, a contiguous range of kv blocks). It owns dK and dV of those keys
 * outright, so they accumulate in a small fp32 block accumulator and need no
 * synchronisation. Its q rows are all T positions x the `group` q heads that
 * read hk (row = t * group + g, so GQA/MQA read each K/V block once for the
 * whole group). Per kv block j, per q block i that can see it:
 *   S   = (scale Q_i) K_j^T            sgemm [rows, D]  x [D, bkv]
 *   P   = exp(finish(S) - lse)          recomputed: no T x S buffer
 *   W   = P*Z                           dropout keep factors, same u
 *   dV += W^T dO_i                      sgemm [bkv, rows] x [rows, Dv]
 *   dW  = dO_i V_j^T                    sgemm [rows, Dv] x [Dv, bkv]
 *   dS  = W*dW - P D,  dbias += dS,  dx = f*dS   (f: soft cap factor)
 *   dQ_i += dx K_j                      sgemm [rows, bkv] x [bkv, D]
 *   dK  += dx^T (scale Q_i)             sgemm [bkv, rows] x [rows, D]
 * dQ_i gathers contributions from every kv block, so it lives in an fp32
 * accumulator for the task's rows, written (times scale) once the task's kv
 * range is done. The rows (scaled Q, dO, lse, D, dQ) are held for a panel of
 * positions at a time: all T of them unless T is very long, which then costs
 * one more sweep over the kv range per panel, never more memory. When there
 * are fewer (b, hk) pairs than the threads can use, the kv range is split
 * over several tasks: each then adds its dQ into a private partial, and a
 * last pass sums the partials.
 *
 * Blocks that causal/window/chunk rule out for every row are never visited. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "core/scratch.h"
#include "core/status.h"
#include "kernels/block_bwd.h"
#include "kernels/blockwise.h"
#include "kernels/kernels_bwd.h"
#include "kernels/rows.h"
#include "kernels/rows_bwd.h"
#include "kernels/vecmath.h"

/* Rows per q block and keys per kv block: five GEMMs per block pair each
 * re-pack their operands, so blocks must be large, but the S, dW and W tiles
 * plus Q_i, dO_i, dQ_i, K_j, V_j and the dK/dV accumulators should stay in
 * L2 (see docs/backward.md for the measurements). */
#define FBWD_ROWS_TARGET 256
#define FBWD_BLOCK_KV 128
/* q/dO/dQ panel of at most ~16 MiB per worker. */
#define FBWD_PANEL_FLOATS ((int64_t)4 << 20)

typedef struct fbwd_ctx {
    const mattn__problem *p;
    const mattn__grad *g;
    const mattn__bwd_prep *prep;
    const mattn__vecmath *vm;
    int64_t bq, bkv, rows_max; /* positions per q block, keys per kv block, bq * group */
    int64_t panel_t, nqb_panel; /* positions per panel (multiple of bq), blocks in it */
    int64_t nkb, nsplit;       /* kv blocks, kv ranges per (b, hk) */
    float *dq_part;            /* [nsplit, B, Hkv, T * group, D] when nsplit > 1 */
    char **ws;
} fbwd_ctx;

typedef mattn__bwd_ws fbwd_ws;

/* With w NULL only sizes the workspace. */
static size_t fbwd_layout(const fbwd_ctx *c, char *base, fbwd_ws *w)
{
    const mattn__bwd_ws_shape shape = {.prow = c->panel_t * c->p->group,
                                       .rows_max = c->rows_max, .bkv = c->bkv,
                                       .nsplit = c->nsplit, .nqb = c->nqb_panel};
    return mattn__bwd_ws_layout(c->p, &shape, base, w);
}

/* Gathers the panel's rows (positions t0..t0+tn of batch b, the q heads of
 * kv head hk) and the union key range of each q block. */
static void gather_panel(const fbwd_ctx *c, fbwd_ws *w, int64_t b, int64_t hk, int64_t t0,
                         int64_t tn)
{
    const mattn__problem *p = c->p;
    const int64_t G = p->group;
    mattn__bwd_gather_rows(p, c->g, c->prep, w, b, hk, t0, tn);
    for (int64_t i = 0; i * c->bq < tn; i++) {
        int64_t lo = p->S, hi = 0;
        int64_t r1 = (i + 1) * c->bq < tn ? (i + 1) * c->bq * G : tn * G;
        for (int64_t r = i * c->bq * G; r < r1; r++) {
            const mattn__row *row = &w->row[r];
            if (row->lo < row->hi) {
                lo = row->lo < lo ? row->lo : lo;
                hi = row->hi > hi ? row->hi : hi;
            }
        }
        w->qb_lo[i] = lo;
        w->qb_hi[i] = hi;
    }
}

static void fbwd_task(void *vctx, int64_t task, int worker)
{
    const fbwd_ctx *c = vctx;
    const mattn__problem *p = c->p;
    const mattn__grad *g = c->g;
    const int64_t G = p->group, D = p->D, Dv = p->Dv, bkv = c->bkv;

    /* Split-major order: with causal masks the first kv ranges are seen by
     * the most rows, so the heaviest tasks go first. */
    int64_t split = task / (p->B * p->Hkv), bh = task % (p->B * p->Hkv);
    int64_t b = bh / p->Hkv, hk = bh % p->Hkv;
    int64_t jb = split * c->nkb / c->nsplit * bkv;
    int64_t je = (split + 1) * c->nkb / c->nsplit * bkv;
    je = je < p->S ? je : p->S;

    fbwd_ws w = {0};
    fbwd_layout(c, c->ws[worker], &w);
    const mattn__dbias_view *dbias = mattn__bwd_dbias_view(c->prep, worker);
    float *dk_out = g->dk + b * g->dk_sb + hk * g->dk_sh;
    float *dv_out = g->dv + b * g->dv_sb + hk * g->dv_sh;
    if (!g->accumulate) /* this task owns keys [jb, je) of (b, hk) */
        for (int64_t j = jb; j < je; j++) {
            memset(dk_out + j * g->dk_ss, 0, sizeof(float) * (size_t)D);
            memset(dv_out + j * g->dv_ss, 0, sizeof(float) * (size_t)Dv);
        }

    for (int64_t t0 = 0; t0 < p->T; t0 += c->panel_t) {
        int64_t tn = c->panel_t < p->T - t0 ? c->panel_t : p->T - t0, prow = tn * G;
        gather_panel(c, &w, b, hk, t0, tn);
        float *dq = c->nsplit > 1
                        ? c->dq_part + ((split * p->B + b) * p->Hkv + hk) * p->T * G * D +
                              t0 * G * D
                        : w.dq;
        memset(dq, 0, sizeof(float) * (size_t)(prow * D));

        for (int64_t j0 = jb; j0 < je; j0 += bkv) {
            int64_t jn = bkv < je - j0 ? bkv : je - j0;
            const float *kb = NULL, *vb = NULL;
            int64_t ldk = 0, ldv = 0;
            for (int64_t i = 0; i * c->bq < tn; i++) {
                if (w.qb_hi[i] <= j0 || w.qb_lo[i] >= j0 + jn)
                    continue; /* no row of this q block sees this kv block */
                int64_t r0 = i * c->bq * G, r1 = (i + 1) * c->bq < tn ? r0 + c->bq * G : prow;
                int any = 0;
                for (int64_t r = r0; r < r1; r++) {
                    w.active[r - r0] = !mattn__row_misses(&w.row[r], j0, jn);
                    any |= w.active[r - r0];
                }
                if (!any)
                    continue;
                if (kb == NULL) { /* first visit of this kv block in the panel */
                    kb = mattn__block_rows(p->k + b * p->k_sb + j0 * p->k_ss + hk * p->k_sh, p->k_ss,
                                    D, jn, w.kbuf, &ldk);
                    vb = mattn__block_rows(p->v + b * p->v_sb + j0 * p->v_ss + hk * p->v_sh, p->v_ss,
                                    Dv, jn, w.vbuf, &ldv);
                    memset(w.dk, 0, sizeof(float) * (size_t)(jn * D));
                    memset(w.dv, 0, sizeof(float) * (size_t)(jn * Dv));
                }
                mattn__bwd_block_pair(c->p, c->vm, &w, c->bkv, dbias, b, hk, t0, r0, r1 - r0, j0, jn, kb, ldk, vb, ldv, dq);
            }
            if (kb) {
                mattn__bwd_store_rows(dk_out + j0 * g->dk_ss, g->dk_ss, w.dk, D, jn, D, 1.0f, 1);
                mattn__bwd_store_rows(dv_out + j0 * g->dv_ss, g->dv_ss, w.dv, Dv, jn, Dv, 1.0f,
                                      1);
            }
        }
        if (c->nsplit == 1)
            for (int64_t gi = 0; gi < G; gi++) {
                int64_t h = hk * G + gi;
                mattn__bwd_store_rows(g->dq + b * g->dq_sb + t0 * g->dq_st + h * g->dq_sh,
                                      g->dq_st, dq + gi * D, G * D, tn, D, p->scale,
                                      g->accumulate);
            }
    }
}

int mattn__flash_backward_kernel(const mattn__problem *p, const mattn__grad *g)
{
    fbwd_ctx c = {.p = p, .g = g, .vm = mattn__vecmath_get()};
    const int64_t G = p->group;
    c.bq = p->block_q > 0 ? p->block_q : (FBWD_ROWS_TARGET + G - 1) / G;
    if (c.bq > p->T)
        c.bq = p->T > 0 ? p->T : 1;
    c.bkv = p->block_kv > 0 ? p->block_kv : FBWD_BLOCK_KV;
    if (c.bkv > p->S)
        c.bkv = p->S > 0 ? p->S : 1;
    c.rows_max = c.bq * G;
    int64_t per_row = G * (2 * p->D + p->Dv + 4);
    c.panel_t = FBWD_PANEL_FLOATS / per_row / c.bq * c.bq;
    /* Tests shrink the panel (positions) to reach the multi-panel path. */
    const char *panel_env = getenv("MATTN_FLASH_BWD_PANEL");
    if (panel_env && atoll(panel_env) > 0 && atoll(panel_env) < c.panel_t)
        c.panel_t = atoll(panel_env) / c.bq * c.bq;
    if (c.panel_t < c.bq)
        c.panel_t = c.bq;
    if (c.panel_t > p->T)
        c.panel_t = p->T > 0 ? p->T : 1;
    c.nqb_panel = (c.panel_t + c.bq - 1) / c.bq;
    c.nkb = (p->S + c.bkv - 1) / c.bkv;

    int64_t nbh = p->B * p->Hkv;
    c.nsplit = mattn__bwd_nsplit(p, c.nkb);
    int64_t ntasks = nbh * c.nsplit;
    int threads = p->threads < ntasks ? p->threads : (int)(ntasks > 0 ? ntasks : 1);
    size_t ws_bytes = fbwd_layout(&c, NULL, NULL);

    mattn__bwd_prep prep;
    char *ws[threads];
    int got = 0;
    int rc = mattn__bwd_prepare(p, g, threads, &prep);
    if (rc)
        goto done;
    if (c.nsplit > 1) {
        size_t n = (size_t)(c.nsplit * nbh * p->T * G * p->D);
        c.dq_part = mattn__scratch_get(sizeof(float) * (n ? n : 1));
        if (c.dq_part == NULL) {
            rc = mattn__fail(MATTN_ERR_NOMEM, "flash backward: cannot allocate %zu floats "
                             "of dq partials", n);
            goto done;
        }
    }
    got = mattn__scratch_get_each(ws, threads, ws_bytes);
    if (got == 0) {
        rc = mattn__fail(MATTN_ERR_NOMEM,
                         "flash backward: cannot allocate %zu bytes of workspace", ws_bytes);
        goto done;
    }
    c.prep = &prep;
    c.ws = ws;
    mattn__blas_hold();
    mattn__parallel_for(threads, ntasks, fbwd_task, &c);
    mattn__blas_release();
    if (c.nsplit > 1)
        mattn__bwd_reduce_dq(p, g, c.dq_part, c.nsplit, threads);
done:
    mattn__scratch_put_each(ws, got);
    mattn__scratch_put(c.dq_part);
    mattn__bwd_finish(p, g, &prep);
    return rc;
}
