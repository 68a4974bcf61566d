/* Splash attention backward: flash backward's algorithm driven by mask info.
 *
 * Shapes: q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv], o and dO
 * [B, T, Hq, Dv], lse and D_i [B, Hq, T] (any strides, head_dim contiguous);
 * info blocks are bq x bkv.
 *
 * Work split (kv-outer, as flash_bwd.c): one task is (batch b, kv head hk, a
 * range of kv blocks); it owns dK/dV of those keys outright. Its rows are
 * positions x the `group` q heads reading hk (row = t * group + g), so each
 * K/V block is read once for the whole group (the MQA/GQA path). The info
 * lists non-empty kv blocks per q block; the backward needs the transpose,
 * so the kernel first builds a column view (per info head and kv block, the
 * q blocks whose block is non-empty, with their tile ids): O(non-empty
 * blocks). Per kv block j, per q block i in its column (the union over the
 * group's heads for per-head info), in sub-blocks of ~256 rows:
 *   S   = (scale Q_i) K_j^T              sgemm
 *   P   = exp(finish(S) - lse)           finish = cap, bias, the options'
 *                                        predicates, then the tile if PARTIAL
 *   W   = P*Z                            dropout, the forward's u
 *   dV += W^T dO_i;  dW = dO_i V_j^T;  dS = W*dW - P D;  dx = f*dS
 *   dQ_i += dx K_j;  dK += dx^T (scale Q_i)      five sgemm in all
 * The element work is rows_bwd.c's, shared with flash and vanilla. EMPTY
 * blocks are never visited (no GEMM, no exp, no K/V read); FULL blocks do no
 * tile work; a row of a head whose block is EMPTY (per-head info) is
 * inactive (P = 0). dQ lives in an fp32 accumulator for a panel of q blocks
 * (all of them unless T is very long); when there are fewer (b, hk) pairs
 * than the threads can use, the kv blocks are split into ranges of equal
 * non-empty-block count, each with a private dQ partial summed at the end. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/parallel.h"
#include "core/scratch.h"
#include "core/status.h"
#include "kernels/block_bwd.h"
#include "kernels/blockwise.h"
#include "kernels/rows.h"
#include "kernels/rows_bwd.h"
#include "kernels/splash.h"
#include "kernels/vecmath.h"

/* GEMM rows per sub-block (positions x group heads): a q block of the info
 * (256 positions by default) times a large group would make the S, dW and
 * W tiles spill out of L2. */
#define SBWD_ROWS_TARGET 256
/* q/dO/dQ panel of at most ~16 MiB per worker. */
#define SBWD_PANEL_FLOATS ((int64_t)4 << 20)

/* Per-list state of the current (q block, kv block): a tile id, -1 FULL, or: */
#define STATE_EMPTY (-2)

/* Column view of an info: for info head h and kv block j, entries
 * start[h * nkb + j] .. start[h * nkb + j + 1] of qb[] (increasing) and
 * tile[] (-1 = FULL). */
typedef struct sbwd_cols {
    int64_t *start;
    int32_t *qb, *tile;
} sbwd_cols;

typedef struct sbwd_ctx {
    const mattn__problem *p;
    const mattn__grad *g;
    const mattn__bwd_prep *prep;
    const mattn_splash_info *info;
    const mattn__vecmath *vm;
    sbwd_cols cols;
    int per_head;
    int64_t nl;              /* lists per task: group (per-head info) or 1 */
    int64_t sub_t, rows_max; /* positions per sub-block, sub_t * group */
    int64_t panel_qb;        /* q blocks per panel */
    int64_t nsplit;
    int64_t *split_kb;       /* [nsplit + 1] kv block boundaries of the ranges */
    float *dq_part;          /* [nsplit, B, Hkv, T * group, D] when nsplit > 1 */
    char **ws;
} sbwd_ctx;

typedef mattn__bwd_ws sbwd_ws;

/* With w NULL only sizes the workspace. */
static size_t sbwd_layout(const sbwd_ctx *c, char *base, sbwd_ws *w)
{
    const mattn_splash_info *info = c->info;
    const mattn__bwd_ws_shape shape = {.prow = c->panel_qb * info->bq * c->p->group,
                                       .rows_max = c->rows_max, .bkv = info->bkv,
                                       .nsplit = c->nsplit, .tiles = c->rows_max,
                                       .ncur = info->nkb * c->nl, .nstate = c->nl};
    return mattn__bwd_ws_layout(c->p, &shape, base, w);
}

/* The transpose of the info's rows, in one scratch block (*mem). Filling by
 * increasing q block keeps every column sorted. */
static int cols_build(const mattn_splash_info *info, sbwd_cols *cols, void **mem)
{
    int64_t ncol = info->heads * info->nkb, nnz = info->row_start[info->heads * info->nqb];
    size_t a = mattn__align64(sizeof(int64_t) * (size_t)(ncol + 1)),
           b = mattn__align64(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
    char *m = mattn__scratch_get(a + 2 * b);
    *mem = m;
    if (m == NULL)
        return mattn__fail(MATTN_ERR_NOMEM,
                           "splash backward: cannot allocate the column view (%lld blocks)",
                           (long long)nnz);
    cols->start = (int64_t *)m;
    cols->qb = (int32_t *)(m + a);
    cols->tile = (int32_t *)(m + a + b);
    int64_t *st = cols->start;
    memset(st, 0, sizeof(int64_t) * (size_t)(ncol + 1));
    for (int64_t h = 0; h < info->heads; h++)
        for (int64_t e = info->row_start[h * info->nqb]; e < info->row_start[(h + 1) * info->nqb];
             e++)
            st[h * info->nkb + info->kv_block[e] + 1]++;
    for (int64_t x = 0; x < ncol; x++)
        st[x + 1] += st[x];
    /* st[x] is now the start of column x; fill advances it to the start of
     * x + 1, and the shift below restores it. */
    for (int64_t h = 0; h < info->heads; h++)
        for (int64_t qb = 0; qb < info->nqb; qb++) {
            int64_t r = h * info->nqb + qb;
            for (int64_t e = info->row_start[r]; e < info->row_start[r + 1]; e++) {
                int64_t pos = st[h * info->nkb + info->kv_block[e]]++;
                cols->qb[pos] = (int32_t)qb;
                cols->tile[pos] = info->tile_id[e];
            }
        }
    for (int64_t x = ncol; x > 0; x--)
        st[x] = st[x - 1];
    st[0] = 0;
    return MATTN_OK;
}

/* The next q block below qb_end in any of kv block kb's lists (cursors cu),
 * with each list's state for it; advances the lists that hold it. Returns
 * -1 when none is left below qb_end. */
static int64_t next_qblock(const sbwd_ctx *c, sbwd_ws *w, int64_t hk, int64_t kb, int64_t *cu,
                           int64_t qb_end)
{
    const sbwd_cols *cols = &c->cols;
    const int64_t nkb = c->info->nkb, G = c->p->group;
    int64_t qb = qb_end;
    for (int64_t li = 0; li < c->nl; li++) {
        int64_t col = (c->per_head ? hk * G + li : 0) * nkb + kb;
        if (cu[li] < cols->start[col + 1] && cols->qb[cu[li]] < qb)
            qb = cols->qb[cu[li]];
    }
    if (qb >= qb_end)
        return -1;
    for (int64_t li = 0; li < c->nl; li++) {
        int64_t col = (c->per_head ? hk * G + li : 0) * nkb + kb;
        if (cu[li] < cols->start[col + 1] && cols->qb[cu[li]] == qb)
            w->state[li] = cols->tile[cu[li]++];
        else
            w->state[li] = STATE_EMPTY;
    }
    return qb;
}

static void sbwd_task(void *vctx, int64_t task, int worker)
{
    const sbwd_ctx *c = vctx;
    const mattn__problem *p = c->p;
    const mattn__grad *g = c->g;
    const mattn_splash_info *info = c->info;
    const int64_t G = p->group, D = p->D, Dv = p->Dv, bq = info->bq, bkv = info->bkv;
    const int64_t nkb = info->nkb, nl = c->nl;

    /* Split-major order: splits are balanced by non-empty blocks already. */
    int64_t split = task / (p->B * p->Hkv), bh = task % (p->B * p->Hkv);
    int64_t b = bh / p->Hkv, hk = bh % p->Hkv;
    int64_t kb0 = c->split_kb[split], kb1 = c->split_kb[split + 1];
    int64_t jb = kb0 * bkv, je = kb1 * bkv < p->S ? kb1 * bkv : p->S;

    sbwd_ws w = {0};
    sbwd_layout(c, c->ws[worker], &w);
    const mattn__dbias_view *dbias = mattn__bwd_dbias_view(c->prep, worker);
    float *dk_out = g->dk + b * g->dk_sb + hk * g->dk_sh;
    float *dv_out = g->dv + b * g->dv_sb + hk * g->dv_sh;
    if (!g->accumulate) /* this task owns keys [jb, je) of (b, hk) */
        for (int64_t j = jb; j < je; j++) {
            memset(dk_out + j * g->dk_ss, 0, sizeof(float) * (size_t)D);
            memset(dv_out + j * g->dv_ss, 0, sizeof(float) * (size_t)Dv);
        }
    for (int64_t kb = kb0; kb < kb1; kb++)
        for (int64_t li = 0; li < nl; li++)
            w.cur[(kb - kb0) * nl + li] =
                c->cols.start[(c->per_head ? hk * G + li : 0) * nkb + kb];

    for (int64_t pq0 = 0; pq0 < info->nqb; pq0 += c->panel_qb) {
        int64_t pq1 = pq0 + c->panel_qb < info->nqb ? pq0 + c->panel_qb : info->nqb;
        int64_t t0 = pq0 * bq, tn = (pq1 * bq < p->T ? pq1 * bq : p->T) - t0;
        mattn__bwd_gather_rows(c->p, c->g, c->prep, &w, b, hk, t0, tn);
        float *dq = c->nsplit > 1
                        ? c->dq_part + ((split * p->B + b) * p->Hkv + hk) * p->T * G * D +
                              t0 * G * D
                        : w.dq;
        memset(dq, 0, sizeof(float) * (size_t)(tn * G * D));

        for (int64_t kb = kb0; kb < kb1; kb++) {
            int64_t j0 = kb * bkv, jn = bkv < p->S - j0 ? bkv : p->S - j0;
            const float *kblk = NULL, *vblk = NULL;
            int64_t ldk = 0, ldv = 0, qb;
            while ((qb = next_qblock(c, &w, hk, kb, w.cur + (kb - kb0) * nl, pq1)) >= 0) {
                int64_t qt0 = qb * bq, qtn = bq < p->T - qt0 ? bq : p->T - qt0;
                for (int64_t s0 = 0; s0 < qtn; s0 += c->sub_t) {
                    int64_t sn = c->sub_t < qtn - s0 ? c->sub_t : qtn - s0;
                    int64_t r0 = (qt0 + s0 - t0) * G, rn = sn * G;
                    int any = 0;
                    for (int64_t r = 0; r < rn; r++) {
                        int32_t st = w.state[c->per_head ? r % G : 0];
                        w.active[r] = st != STATE_EMPTY &&
                                      !mattn__row_misses(&w.row[r0 + r], j0, jn);
                        w.tile[r] = st >= 0 ? info->tiles + ((size_t)st * (size_t)bq +
                                                             (size_t)(s0 + r / G)) *
                                                                (size_t)bkv
                                            : NULL;
                        any |= w.active[r];
                    }
                    if (!any)
                        continue;
                    if (kblk == NULL) { /* first visit of this kv block in the panel */
                        kblk = mattn__block_rows(p->k + b * p->k_sb + j0 * p->k_ss +
                                                     hk * p->k_sh,
                                                 p->k_ss, D, jn, w.kbuf, &ldk);
                        vblk = mattn__block_rows(p->v + b * p->v_sb + j0 * p->v_ss +
                                                     hk * p->v_sh,
                                                 p->v_ss, Dv, jn, w.vbuf, &ldv);
                        memset(w.dk, 0, sizeof(float) * (size_t)(jn * D));
                        memset(w.dv, 0, sizeof(float) * (size_t)(jn * Dv));
                    }
                    mattn__bwd_block_pair(c->p, c->vm, &w, c->info->bkv, dbias, b, hk, t0, r0, rn, j0, jn, kblk, ldk, vblk, ldv,
                               dq);
                }
            }
            if (kblk) {
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

/* Range boundaries over the kv blocks with about equal numbers of non-empty
 * blocks (summed over info heads) in each: with causal masks the first kv
 * blocks are seen by many more q blocks than the last. */
static void split_ranges(const sbwd_ctx *c, int64_t *split_kb)
{
    const mattn_splash_info *info = c->info;
    int64_t total = c->cols.start[info->heads * info->nkb], acc = 0, s = 1;
    split_kb[0] = 0;
    for (int64_t kb = 0; kb < info->nkb && s < c->nsplit; kb++) {
        for (int64_t h = 0; h < info->heads; h++)
            acc += c->cols.start[h * info->nkb + kb + 1] - c->cols.start[h * info->nkb + kb];
        while (s < c->nsplit && acc * c->nsplit >= total * s)
            split_kb[s++] = kb + 1;
    }
    while (s <= c->nsplit)
        split_kb[s++] = info->nkb;
}

int mattn__splash_backward_kernel(const mattn__problem *p, const mattn__grad *g,
                                  const mattn_splash_info *info)
{
    sbwd_ctx c = {.p = p, .g = g, .info = info, .vm = mattn__vecmath_get()};
    const int64_t G = p->group;
    c.per_head = info->heads > 1;
    c.nl = c.per_head ? G : 1;
    c.sub_t = SBWD_ROWS_TARGET / G;
    c.sub_t = c.sub_t < 1 ? 1 : (c.sub_t > info->bq ? info->bq : c.sub_t);
    c.rows_max = c.sub_t * G;
    int64_t per_row = G * (2 * p->D + p->Dv + 4);
    c.panel_qb = SBWD_PANEL_FLOATS / per_row / info->bq;
    /* Tests shrink the panel (positions), as for flash, to reach the
     * multi-panel path at test sizes. */
    const char *panel_env = getenv("MATTN_FLASH_BWD_PANEL");
    if (panel_env && atoll(panel_env) > 0 && atoll(panel_env) / info->bq < c.panel_qb)
        c.panel_qb = atoll(panel_env) / info->bq;
    if (c.panel_qb < 1)
        c.panel_qb = 1;
    if (c.panel_qb > info->nqb)
        c.panel_qb = info->nqb > 0 ? info->nqb : 1;

    int64_t nbh = p->B * p->Hkv;
    c.nsplit = mattn__bwd_nsplit(p, info->nkb);
    int64_t ntasks = nbh * c.nsplit;
    int threads = p->threads < ntasks ? p->threads : (int)(ntasks > 0 ? ntasks : 1);
    size_t ws_bytes = sbwd_layout(&c, NULL, NULL);

    mattn__bwd_prep prep;
    char *ws[threads];
    void *cols_mem = NULL;
    int got = 0;
    int rc = mattn__bwd_prepare(p, g, threads, &prep);
    if (rc)
        goto done;
    if ((rc = cols_build(info, &c.cols, &cols_mem)))
        goto done;
    c.split_kb = mattn__scratch_get(sizeof(int64_t) * (size_t)(c.nsplit + 1));
    if (c.split_kb == NULL) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "splash backward: out of memory");
        goto done;
    }
    split_ranges(&c, c.split_kb);
    if (c.nsplit > 1) {
        size_t n = (size_t)(c.nsplit * nbh * p->T * G * p->D);
        c.dq_part = mattn__scratch_get(sizeof(float) * (n ? n : 1));
        if (c.dq_part == NULL) {
            rc = mattn__fail(MATTN_ERR_NOMEM,
                             "splash backward: cannot allocate %zu floats of dq partials", n);
            goto done;
        }
    }
    got = mattn__scratch_get_each(ws, threads, ws_bytes);
    if (got == 0) {
        rc = mattn__fail(MATTN_ERR_NOMEM,
                         "splash backward: cannot allocate %zu bytes of workspace", ws_bytes);
        goto done;
    }
    c.prep = &prep;
    c.ws = ws;
    mattn__blas_hold();
    mattn__parallel_for(threads, ntasks, sbwd_task, &c);
    mattn__blas_release();
    if (c.nsplit > 1)
        mattn__bwd_reduce_dq(p, g, c.dq_part, c.nsplit, threads);
done:
    mattn__scratch_put_each(ws, got);
    mattn__scratch_put(c.dq_part);
    mattn__scratch_put(c.split_kb);
    mattn__scratch_put(cols_mem);
    mattn__bwd_finish(p, g, &prep);
    return rc;
}
