/* Splash attention forward: flash's online softmax driven by mask info.
 *
 * Shapes: q [B, T, Hq, D], k [B, S, Hkv, D], v [B, S, Hkv, Dv] (any strides),
 * o [B, T, Hq, Dv], lse [B, Hq, T]; info blocks are bq x bkv.
 *
 * One task is (batch b, kv head hk, q block qb, group slice). Its rows are
 * the tn positions of the q block x the q heads of the slice that read hk,
 * row = t * gn + g: one K/V block feeds every q head of the slice, and with
 * the default slice = the whole group, MQA/GQA read each K/V block once for
 * all their q heads. The kv loop walks only the q block's non-empty kv
 * blocks from the info (the union over the slice's heads for per-head info):
 *   S = (scale q) K^T                          sgemm [rows, D] x [D, bkv]
 *   finish logits (cap, bias, option predicates: rows.c), then
 *     PARTIAL: s = -inf where the block's tile is 0;  FULL: nothing
 *   online softmax update, dropout             (blockwise.h)
 *   acc += P V                                 sgemm [rows, bkv] x [bkv, Dv]
 * EMPTY blocks are never visited: no GEMM, no exp, no K/V read. A row of a
 * head for which the block is EMPTY (per-head info) gets P = 0. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "core/parallel.h"
#include "core/positions.h"
#include "core/scratch.h"
#include "core/status.h"
#include "kernels/blockwise.h"
#include "kernels/rows.h"
#include "kernels/splash.h"
#include "kernels/vecmath.h"

/* Rows per task beyond which the group is cut into slices (each slice
 * re-reads the K/V block): bounds the per-thread q, S and acc tiles. */
#define SPLASH_ROWS_MAX 512

/* Tile id meaning "this head has nothing in this kv block". */
#define STATE_EMPTY (-2)

typedef struct splash_ctx {
    const mattn__problem *p;
    const mattn_splash_info *info;
    const mattn__vecmath *vm;
    int64_t gs, nsub, rows_max;
    int per_head;
    char **ws;
} splash_ctx;

typedef struct splash_ws {
    mattn__fwd_ws f; /* the rows, as in flash */
    /* One non-empty-block list per head of the slice (one in all when the
     * info is shared by all heads): its entries and a cursor into them. */
    const int32_t **kbs, **tls;
    int64_t *cnt, *cur;
    int32_t *state; /* per list: tile id of the current kv block, -1 FULL, STATE_EMPTY */
} splash_ws;

/* With w NULL only sizes the workspace. */
static size_t splash_ws_layout(const splash_ctx *c, char *base, splash_ws *w)
{
    size_t lists = (size_t)c->gs;
    mattn__carver cv = {base, 0};
    splash_ws sizing;
    if (w == NULL)
        w = &sizing;
    mattn__fwd_ws_carve(c->p, c->rows_max, c->info->bkv, &cv, &w->f);
    w->kbs = mattn__carve(&cv, sizeof *w->kbs, lists);
    w->tls = mattn__carve(&cv, sizeof *w->tls, lists);
    w->cnt = mattn__carve(&cv, sizeof *w->cnt, lists);
    w->cur = mattn__carve(&cv, sizeof *w->cur, lists);
    w->state = mattn__carve(&cv, sizeof *w->state, lists);
    return cv.off;
}

/* The next kv block present in any list (-1 when all are exhausted), with
 * each list's state for it; advances the lists that hold it. */
static int64_t next_block(splash_ws *w, int64_t nl)
{
    int64_t kb = INT64_MAX;
    for (int64_t li = 0; li < nl; li++)
        if (w->cur[li] < w->cnt[li] && w->kbs[li][w->cur[li]] < kb)
            kb = w->kbs[li][w->cur[li]];
    if (kb == INT64_MAX)
        return -1;
    for (int64_t li = 0; li < nl; li++) {
        if (w->cur[li] < w->cnt[li] && w->kbs[li][w->cur[li]] == kb)
            w->state[li] = w->tls[li][w->cur[li]++];
        else
            w->state[li] = STATE_EMPTY;
    }
    return kb;
}

static void splash_task(void *vctx, int64_t task, int worker)
{
    const splash_ctx *c = vctx;
    const mattn__problem *p = c->p;
    const mattn_splash_info *info = c->info;
    const mattn__vecmath *vm = c->vm;
    const int64_t G = p->group, D = p->D, Dv = p->Dv, bq = info->bq, bkv = info->bkv;

    /* Heaviest q blocks first (info->order). */
    int64_t per_qb = p->B * p->Hkv * c->nsub, rest = task % per_qb;
    int64_t qb = info->order[task / per_qb];
    int64_t b = rest / (p->Hkv * c->nsub), hk = rest / c->nsub % p->Hkv, sg = rest % c->nsub;
    int64_t g0 = sg * c->gs, gn = c->gs < G - g0 ? c->gs : G - g0;
    int64_t t0 = qb * bq, tn = bq < p->T - t0 ? bq : p->T - t0;
    int64_t rows = tn * gn, nl = c->per_head ? gn : 1;

    splash_ws w;
    splash_ws_layout(c, c->ws[worker], &w);

    /* Rows, and the union [jlo, jhi) of the keys the options allow them. */
    int64_t jlo = p->S, jhi = 0;
    for (int64_t tt = 0; tt < tn; tt++) {
        for (int64_t g = 0; g < gn; g++) {
            int64_t r = tt * gn + g, h = hk * G + g0 + g;
            mattn__row_init(p, b, h, t0 + tt, &w.f.row[r]);
            const float *src = p->q + b * p->q_sb + (t0 + tt) * p->q_st + h * p->q_sh;
            float *dst = w.f.q + r * D;
            for (int64_t d = 0; d < D; d++)
                dst[d] = src[d] * p->scale;
            mattn__osm_start(p->sinks ? p->sinks[h] : -INFINITY, &w.f.m[r], &w.f.l[r]);
        }
        const mattn__row *r0 = &w.f.row[tt * gn]; /* the range depends on the position only */
        if (r0->lo < r0->hi) {
            jlo = r0->lo < jlo ? r0->lo : jlo;
            jhi = r0->hi > jhi ? r0->hi : jhi;
        }
    }
    memset(w.f.acc, 0, sizeof(float) * (size_t)(rows * Dv));
    for (int64_t li = 0; li < nl; li++) {
        w.cnt[li] = mattn_splash_info_row(info, c->per_head ? hk * G + g0 + li : 0, qb,
                                          &w.kbs[li], &w.tls[li]);
        w.cur[li] = 0;
    }

    for (int64_t kb; (kb = next_block(&w, nl)) >= 0;) {
        int64_t j0 = kb * bkv, jn = bkv < p->S - j0 ? bkv : p->S - j0;
        if (j0 >= jhi || j0 + jn <= jlo) /* the options rule the block out */
            continue;
        int any = 0;
        for (int64_t r = 0; r < rows && !any; r++)
            any = w.state[c->per_head ? r % gn : 0] != STATE_EMPTY &&
                  !mattn__row_misses(&w.f.row[r], j0, jn);
        if (!any)
            continue;

        int64_t ldk, ldv;
        const float *kblk = mattn__block_rows(p->k + b * p->k_sb + j0 * p->k_ss + hk * p->k_sh,
                                              p->k_ss, D, jn, w.f.kbuf, &ldk);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)jn, (int)D, 1.0f,
                    w.f.q, (int)D, kblk, (int)ldk, 0.0f, w.f.s, (int)bkv);

        for (int64_t r = 0; r < rows; r++) {
            float *s = w.f.s + r * bkv;
            const mattn__row *row = &w.f.row[r];
            int32_t st = w.state[c->per_head ? r % gn : 0];
            if (st == STATE_EMPTY || mattn__row_misses(row, j0, jn)) {
                memset(s, 0, sizeof(float) * (size_t)jn);
                continue;
            }
            mattn__row_logits(p, vm, row, s, j0, jn);
            if (st >= 0) { /* PARTIAL: the tile row of this position */
                const uint8_t *t = info->tiles + ((size_t)st * (size_t)bq + (size_t)(r / gn)) *
                                                     (size_t)bkv;
                for (int64_t j = 0; j < jn; j++)
                    s[j] = t[j] ? s[j] : -INFINITY;
            }
            if (!mattn__osm_update(vm, s, jn, &w.f.m[r], &w.f.l[r], w.f.acc + r * Dv, Dv))
                continue;
            if (p->dropout_p > 0.0f)
                mattn__row_dropout(p, vm, row, s, j0, jn);
        }

        const float *vblk = mattn__block_rows(p->v + b * p->v_sb + j0 * p->v_ss + hk * p->v_sh,
                                              p->v_ss, Dv, jn, w.f.vbuf, &ldv);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)Dv, (int)jn, 1.0f,
                    w.f.s, (int)bkv, vblk, (int)ldv, 1.0f, w.f.acc, (int)Dv);
    }

    for (int64_t tt = 0; tt < tn; tt++)
        for (int64_t g = 0; g < gn; g++) {
            int64_t r = tt * gn + g, h = hk * G + g0 + g;
            mattn__osm_finish(w.f.acc + r * Dv, w.f.m[r], w.f.l[r], Dv,
                              p->o + b * p->o_sb + (t0 + tt) * p->o_st + h * p->o_sh,
                              p->lse ? p->lse + b * p->lse_sb + h * p->lse_sh + t0 + tt : NULL);
        }
}

int mattn__splash_forward_kernel(const mattn__problem *p, const mattn_splash_info *info)
{
    if (p->B == 0 || p->T == 0)
        return MATTN_OK;
    splash_ctx c = {.p = p, .info = info, .vm = mattn__vecmath_get()};
    int64_t G = p->group;
    c.per_head = info->heads > 1;
    c.gs = info->bq * G <= SPLASH_ROWS_MAX ? G : SPLASH_ROWS_MAX / info->bq;
    if (c.gs < 1)
        c.gs = 1;
    c.nsub = (G + c.gs - 1) / c.gs;
    c.rows_max = info->bq * c.gs;
    int64_t ntasks = info->nqb * p->B * p->Hkv * c.nsub;
    int threads = p->threads < ntasks ? p->threads : (int)ntasks;
    size_t ws_bytes = splash_ws_layout(&c, NULL, NULL);

    char *ws[threads];
    int rc = MATTN_OK, got = 0;
    got = mattn__scratch_get_each(ws, threads, ws_bytes);
    if (got == 0) {
        rc = mattn__fail(MATTN_ERR_NOMEM, "splash: cannot allocate %zu bytes of workspace",
                         ws_bytes);
        goto done;
    }
    c.ws = ws;
    mattn__blas_hold();
    mattn__parallel_for(threads, ntasks, splash_task, &c);
    mattn__blas_release();
done:
    mattn__scratch_put_each(ws, got);
    return rc;
}
