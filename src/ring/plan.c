/* Which query rows can see which key rows, decided from the structure of
 * the problem alone, through the splash mask machinery.
 *
 * The plan holds the problem's structural mask (mattn__splash_problem_mask:
 * the causal/window/chunk band, ANDed with the boolean mask when one array
 * serves every batch entry) placed at the global problem's offsets, so a
 * (query rows, key rows) rectangle in global indices is classified by
 * mattn__mask_classify: O(1) per band, a scan of the rectangle for a dense
 * mask. EMPTY is exact for a band and for a dense array, conservative for
 * their AND (an empty intersection of non-empty parts is computed, and
 * gives zero, never a wrong answer). Segment ids are data of the batch
 * entry and never rule a pair out.
 *
 * The rank-pair matrix is built once per call: every rank of the ring
 * evaluates it alike, which is what lets each decide who talks to whom
 * without a message. */
#include <stdlib.h>

#include "core/status.h"
#include "kernels/splash_mask.h"
#include "ring/ring.h"

void mattn__ring_runs(int64_t n, int sp, int sp_rank, mattn_seq_layout layout,
                      mattn__runs *runs)
{
    int64_t start[2], count[2], local = 0;
    runs->n = mattn_seq_split(n, sp, sp_rank, layout, start, count);
    for (int i = 0; i < runs->n; i++) {
        runs->r[i] = (mattn__run){.local = local, .global = start[i], .count = count[i]};
        local += count[i];
    }
}

int mattn__ring_live(const mattn__ring_plan *pl, int64_t q_row, int64_t qn, int64_t kv_col,
                     int64_t kn)
{
    if (qn <= 0 || kn <= 0)
        return 0;
    if (pl->mask == NULL)
        return 1;
    /* Absolute positions, inclusive ends; head -1: EMPTY only if empty for
     * every head of a per-head mask. */
    int64_t qa = pl->q_offset + q_row, ka = pl->kv_offset + kv_col;
    return mattn__mask_classify(pl->mask, -1, qa, qa + qn - 1, ka, ka + kn - 1) !=
           MATTN_SPLASH_EMPTY;
}

static int runs_live(const mattn__ring_plan *pl, const mattn__runs *q, const mattn__runs *kv)
{
    for (int i = 0; i < q->n; i++)
        for (int j = 0; j < kv->n; j++)
            if (mattn__ring_live(pl, q->r[i].global, q->r[i].count, kv->r[j].global,
                                 kv->r[j].count))
                return 1;
    return 0;
}

int mattn__ring_plan_init(mattn__ring_plan *pl, const mattn__problem *local,
                          const mattn_dist_shape *shape, int sp)
{
    pl->mask = NULL;
    pl->needs = NULL;
    pl->P = sp;
    pl->q_offset = local->q_offset;
    pl->kv_offset = local->kv_offset;
    /* The local problem widened to the global rows and keys: its mask
     * pointer is at this rank's batch entry and q head but indexed by global
     * row and key (mesh/dist.h), its heads are this rank's. */
    mattn__problem g = *local;
    g.T = shape->q_len;
    g.S = shape->kv_len;
    int used_mask, rc = mattn__splash_problem_mask(&g, &pl->mask, &used_mask);
    if (rc)
        return rc;
    pl->needs = malloc((size_t)sp * (size_t)sp);
    if (pl->needs == NULL) {
        mattn__ring_plan_free(pl);
        return mattn__fail(MATTN_ERR_NOMEM, "ring: cannot allocate the %d x %d rank plan", sp,
                           sp);
    }
    for (int a = 0; a < sp; a++) {
        mattn__runs q, kv;
        mattn__ring_runs(shape->q_len, sp, a, shape->layout, &q);
        for (int b = 0; b < sp; b++) {
            mattn__ring_runs(shape->kv_len, sp, b, shape->layout, &kv);
            pl->needs[a * sp + b] = (uint8_t)runs_live(pl, &q, &kv);
        }
    }
    return MATTN_OK;
}

void mattn__ring_plan_free(mattn__ring_plan *pl)
{
    mattn_splash_mask_free(pl->mask);
    free(pl->needs);
    pl->mask = NULL;
    pl->needs = NULL;
}
