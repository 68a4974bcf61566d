/* Flash attention forward: blockwise online softmax over OpenBLAS blocks.
 *
 * Shapes: q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] (any strides),
 * o [B, T, Hq, Dv], lse [B, Hq, T].
 *
 * One task is (batch b, kv head hk, block of bq query positions). Its rows are
 * the bq positions x the `group` q heads that read hk, row = t * group + g, so
 * one K/V block feeds every q head of the group (GQA/MQA read K/V once) and
 * the GEMMs stay large even when bq is small. For each kv block:
 *   S = (scale q) K^T                    sgemm [rows, D] x [D, bkv]
 *   m' = max(m, rowmax S);  P = exp(S - m');  l = l e^(m - m') + rowsum P
 *   acc = acc e^(m - m') + dropout(P) V  sgemm [rows, bkv] x [bkv, Dv]
 * and at the end o = acc / l, lse = m + log l. The running (m, l) rescale is
 * what keeps memory at O(rows x bkv) instead of T x S.
 *
 * Blocks outside every row's causal/window/chunk range are never visited;
 * blocks inside every row's range skip the element-wise mask. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "core/parallel.h"
#include "core/positions.h"
#include "core/scratch.h"
#include "core/status.h"
#include "kernels/blockwise.h"
#include "kernels/kernels.h"
#include "kernels/rows.h"
#include "kernels/vecmath.h"

/* OpenBLAS packs both operands on every call; packing K and V blocks is
 * amortised over the rows of a task, so rows should be many. 256 rows x 256
 * keys keeps the q, S and acc tiles (~0.6 MiB) within L2 and measured best
 * (perf: GEMM kernel share 85% vs 82% at 128 rows, Haswell core). */
#define FLASH_ROWS_TARGET 256
#define FLASH_BLOCK_KV 256

typedef struct flash_ctx {
    const mattn__problem *p;
    const mattn__vecmath *vm;
    int64_t bq, bkv, rows_max, n_qblocks;
    size_t ws_bytes;
    char **ws; /* one workspace per worker */
} flash_ctx;

/* Workspace carve-up, in floats unless said otherwise. */
typedef mattn__fwd_ws flash_ws;

/* With w NULL only sizes the workspace. */
static size_t flash_ws_layout(const flash_ctx *c, char *base, flash_ws *w)
{
    mattn__carver cv = {base, 0};
    flash_ws sizing;
    mattn__fwd_ws_carve(c->p, c->rows_max, c->bkv, &cv, w ? w : &sizing);
    return cv.off;
}

static void flash_task(void *vctx, int64_t task, int worker)
{
    const flash_ctx *c = vctx;
    const mattn__problem *p = c->p;
    const mattn__vecmath *vm = c->vm;
    const int64_t G = p->group, D = p->D, Dv = p->Dv, bkv = c->bkv;

    /* Heaviest (last, for causal) q blocks first. */
    int64_t qb = c->n_qblocks - 1 - task / (p->B * p->Hkv);
    int64_t b = (task / p->Hkv) % p->B, hk = task % p->Hkv;
    int64_t t0 = qb * c->bq, tn = c->bq < p->T - t0 ? c->bq : p->T - t0;
    int64_t rows = tn * G;

    flash_ws w;
    flash_ws_layout(c, c->ws[worker], &w);

    /* Rows, their allowed key ranges, and the union range [jlo, jhi). */
    int64_t jlo = p->S, jhi = 0;
    for (int64_t tt = 0; tt < tn; tt++) {
        for (int64_t g = 0; g < G; g++) {
            int64_t r = tt * G + g, h = hk * G + g;
            mattn__row_init(p, b, h, t0 + tt, &w.row[r]);
            const float *src = p->q + b * p->q_sb + (t0 + tt) * p->q_st + h * p->q_sh;
            float *dst = w.q + r * D;
            for (int64_t d = 0; d < D; d++)
                dst[d] = src[d] * p->scale;
            float sink = p->sinks ? p->sinks[h] : -INFINITY;
            /* A sink is a logit with no value: start the row with it. */
            w.m[r] = sink;
            w.l[r] = sink > -INFINITY ? 1.0f : 0.0f;
        }
        const mattn__row *r0 = &w.row[tt * G];
        if (r0->lo < r0->hi) {
            jlo = r0->lo < jlo ? r0->lo : jlo;
            jhi = r0->hi > jhi ? r0->hi : jhi;
        }
    }
    memset(w.acc, 0, sizeof(float) * (size_t)(rows * Dv));

    for (int64_t j0 = jlo; j0 < jhi; j0 += bkv) {
        int64_t jn = bkv < jhi - j0 ? bkv : jhi - j0;
        int any = 0;
        for (int64_t tt = 0; tt < tn && !any; tt++)
            any = !mattn__row_misses(&w.row[tt * G], j0, jn);
        if (!any)
            continue;

        int64_t ldk, ldv;
        const float *kb = mattn__block_rows(p->k + b * p->k_sb + j0 * p->k_ss + hk * p->k_sh,
                                            p->k_ss, D, jn, w.kbuf, &ldk);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)jn, (int)D,
                    1.0f, w.q, (int)D, kb, (int)ldk, 0.0f, w.s, (int)bkv);

        for (int64_t r = 0; r < rows; r++) {
            float *s = w.s + r * bkv;
            const mattn__row *row = &w.row[r];
            if (mattn__row_misses(row, j0, jn)) {
                memset(s, 0, sizeof(float) * (size_t)jn);
                continue;
            }
            mattn__row_logits(p, vm, row, s, j0, jn);
            float mb = vm->max(s, jn);
            float m_new = mb > w.m[r] ? mb : w.m[r];
            if (m_new == -INFINITY) { /* nothing allowed in this row yet */
                memset(s, 0, sizeof(float) * (size_t)jn);
                continue;
            }
            /* e^(m - m') rescales what was accumulated under the old max;
             * it is 0 when the row had nothing (m = -inf). */
            float alpha = expf(w.m[r] - m_new);
            w.l[r] = w.l[r] * alpha + vm->exp_sum(s, jn, m_new);
            w.m[r] = m_new;
            if (alpha != 1.0f) {
                float *acc = w.acc + r * Dv;
                for (int64_t d = 0; d < Dv; d++)
                    acc[d] *= alpha;
            }
            if (p->dropout_p > 0.0f)
                mattn__row_dropout(p, vm, row, s, j0, jn);
        }

        const float *vb = mattn__block_rows(p->v + b * p->v_sb + j0 * p->v_ss + hk * p->v_sh,
                                            p->v_ss, Dv, jn, w.vbuf, &ldv);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)Dv,
                    (int)jn, 1.0f, w.s, (int)bkv, vb, (int)ldv, 1.0f, w.acc, (int)Dv);
    }

    for (int64_t tt = 0; tt < tn; tt++) {
        for (int64_t g = 0; g < G; g++) {
            int64_t r = tt * G + g, h = hk * G + g;
            float *dst = p->o + b * p->o_sb + (t0 + tt) * p->o_st + h * p->o_sh;
            const float *acc = w.acc + r * Dv;
            /* l == 0 only for a row with no allowed key and no sink: o = 0. */
            float inv = w.l[r] > 0.0f ? 1.0f / w.l[r] : 0.0f;
            for (int64_t d = 0; d < Dv; d++)
                dst[d] = acc[d] * inv;
            if (p->lse)
                p->lse[b * p->lse_sb + h * p->lse_sh + t0 + tt] =
                    w.l[r] > 0.0f ? w.m[r] + logf(w.l[r]) : -INFINITY;
        }
    }
}

int mattn__flash_forward_kernel(const mattn__problem *p)
{
    if (p->B == 0 || p->T == 0)
        return MATTN_OK;
    flash_ctx c = {.p = p, .vm = mattn__vecmath_get()};
    int64_t G = p->group;
    c.bq = p->block_q > 0 ? p->block_q : (FLASH_ROWS_TARGET + G - 1) / G;
    if (c.bq > p->T)
        c.bq = p->T;
    c.bkv = p->block_kv > 0 ? p->block_kv : FLASH_BLOCK_KV;
    if (c.bkv > p->S && p->S > 0)
        c.bkv = p->S;
    if (c.bkv < 1)
        c.bkv = 1;
    c.rows_max = c.bq * G;
    c.n_qblocks = (p->T + c.bq - 1) / c.bq;
    int64_t ntasks = c.n_qblocks * p->B * p->Hkv;
    int threads = p->threads < ntasks ? p->threads : (int)ntasks;
    c.ws_bytes = flash_ws_layout(&c, NULL, NULL);

    char *ws[threads];
    int rc = MATTN_OK, got = 0;
    got = mattn__scratch_get_each(ws, threads, c.ws_bytes);
    if (got == 0) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "flash: cannot allocate %zu bytes of workspace",
                         c.ws_bytes);
        goto done;
    }
    c.ws = ws;
    mattn__blas_hold();
    mattn__parallel_for(threads, ntasks, flash_task, &c);
    mattn__blas_release();
done:
    mattn__scratch_put_each(ws, got);
    return rc;
}
