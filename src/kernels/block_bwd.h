/* The (q rows, kv block) step both blockwise backward kernels share: a
 * panel's rows gathered once, then five GEMMs and the row work per pair.
 * flash_bwd.c and splash_bwd.c differ only in which pairs they visit (and
 * splash in the mask tile a row applies), never in this. */
#ifndef MATTN_KERNELS_BLOCK_BWD_H
#define MATTN_KERNELS_BLOCK_BWD_H

#include <stddef.h>
#include <stdint.h>

#include "core/problem.h"
#include "kernels/kernels_bwd.h"
#include "kernels/rows.h"
#include "kernels/vecmath.h"

/* One worker's workspace. The fields after kbuf/vbuf belong to one kernel
 * each and stay NULL in the other. */
typedef struct mattn__bwd_ws {
    float *q, *dout, *dq;     /* panel rows: [prow, D] scaled q, [prow, Dv], [prow, D] */
    float *lse, *delta;       /* [prow] */
    mattn__row *row;          /* [prow]; empty rows (lse = -inf) have hi = lo */
    unsigned char *active;    /* [rows_max]: the row takes part in the current pair */
    float *s, *dp, *w, *capf; /* [rows_max, bkv]: P, dW then dx, W (dropout), cap factor */
    float *dk, *dv;           /* [bkv, D], [bkv, Dv] accumulators */
    float *kbuf, *vbuf;       /* K/V block when rows are not BLAS-addressable */
    int64_t *qb_lo, *qb_hi;   /* flash: per q block of the panel, union of its key ranges */
    const uint8_t **tile;     /* splash: [rows_max] the row's mask tile row, NULL = FULL */
    int64_t *cur;             /* splash: [nkb, nl] column cursors */
    int32_t *state;           /* splash: [nl] */
} mattn__bwd_ws;

/* What one worker's workspace must hold: panels of prow rows, pairs of
 * rows_max x bkv, dq rows in the workspace only when nsplit == 1, and the
 * pieces of one kernel (0 for the other's, whose pointers stay NULL). */
typedef struct mattn__bwd_ws_shape {
    int64_t prow, rows_max, bkv, nsplit;
    int64_t nqb;          /* flash: q blocks per panel (qb_lo, qb_hi) */
    int64_t tiles;        /* splash: rows with a mask tile pointer (tile) */
    int64_t ncur, nstate; /* splash: column cursors, list states */
} mattn__bwd_ws_shape;

/* Bytes of that workspace; with w not NULL also carves it out of base. */
size_t mattn__bwd_ws_layout(const mattn__problem *p, const mattn__bwd_ws_shape *s, char *base,
                            mattn__bwd_ws *w);

/* Gathers panel rows r = tt * group + gi for positions t0..t0+tn of batch b
 * and the q heads of kv head hk: scaled q, dO, lse, D_i and row contexts. */
void mattn__bwd_gather_rows(const mattn__problem *p, const mattn__grad *g,
                            const mattn__bwd_prep *prep, mattn__bwd_ws *w, int64_t b,
                            int64_t hk, int64_t t0, int64_t tn);

/* The five GEMMs and the row work of panel rows [r0, r0 + rn) (positions
 * from t0) against keys [j0, j0 + jn) (K/V rows kb, vb with leading dims
 * ldk, ldv); w->active (and w->tile when set) describe the rows. Adds into
 * dq (the panel's dQ rows), w->dk and w->dv. */
void mattn__bwd_block_pair(const mattn__problem *p, const mattn__vecmath *vm, mattn__bwd_ws *w,
                           int64_t bkv, const mattn__dbias_view *dbias, int64_t b, int64_t hk,
                           int64_t t0, int64_t r0, int64_t rn, int64_t j0, int64_t jn,
                           const float *kb, int64_t ldk, const float *vb, int64_t ldv,
                           float *dq);

/* Into how many kv ranges (of nkb kv blocks) each (b, hk) is split so the
 * threads have enough tasks: 1 when there are (b, hk) pairs enough. */
int64_t mattn__bwd_nsplit(const mattn__problem *p, int64_t nkb);

/* dq = scale * (sum of the nsplit kv-range partials dq_part [nsplit][B, Hkv,
 * T * group, D]) (added when g->accumulate), in parallel over (b, hk,
 * position chunks); for kernels that split the kv range. */
void mattn__bwd_reduce_dq(const mattn__problem *p, const mattn__grad *g, const float *dq_part,
                          int64_t nsplit, int threads);

#endif
