/* Helpers shared by the blockwise kernels (flash, splash): the online
 * softmax of one row over successive key blocks, and K/V block addressing.
 *
 * Online softmax state of a row: running max m, running sum l of
 * exp(s - m), and the unnormalised output acc[Dv] = sum exp(s - m) v. A new
 * block with max m' rescales the old state by e^(m - m'); that rescale is
 * what keeps memory at one block of logits instead of the whole row. */
#ifndef MATTN_KERNELS_BLOCKWISE_H
#define MATTN_KERNELS_BLOCKWISE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/problem.h"
#include "core/scratch.h"
#include "kernels/rows.h"
#include "kernels/vecmath.h"

/* A sink is a logit with no value (SPEC §4): the row starts with it. */
static inline void mattn__osm_start(float sink, float *m, float *l)
{
    *m = sink;
    *l = sink > -INFINITY ? 1.0f : 0.0f;
}

/* Folds the finished logits s[0..n) (disallowed keys = -inf) into the row
 * state: s becomes exp(s - m'), ready for the P V product. Returns 0, with
 * s zeroed, while the row has seen nothing (no allowed key, no sink), so the
 * block adds nothing to acc. */
static inline int mattn__osm_update(const mattn__vecmath *vm, float *s, int64_t n, float *m,
                                    float *l, float *acc, int64_t Dv)
{
    float mb = vm->max(s, n);
    float m_new = mb > *m ? mb : *m;
    if (m_new == -INFINITY) {
        memset(s, 0, sizeof(float) * (size_t)n);
        return 0;
    }
    /* e^(m - m') is 0 when the row had nothing so far (m = -inf). */
    float alpha = expf(*m - m_new);
    *l = *l * alpha + vm->exp_sum(s, n, m_new);
    *m = m_new;
    if (alpha != 1.0f)
        for (int64_t d = 0; d < Dv; d++)
            acc[d] *= alpha;
    return 1;
}

/* o = acc / l and lse = m + log l; a row with no allowed key and no sink
 * (l = 0) gives o = 0 and lse = -inf (SPEC §4, never NaN). lse may be NULL. */
static inline void mattn__osm_finish(const float *acc, float m, float l, int64_t Dv, float *o,
                                     float *lse)
{
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int64_t d = 0; d < Dv; d++)
        o[d] = acc[d] * inv;
    if (lse)
        *lse = l > 0.0f ? m + logf(l) : -INFINITY;
}

/* True when rows `stride` floats apart can be handed to BLAS as a matrix. */
static inline int mattn__blas_rows_ok(int64_t stride, int64_t dim)
{
    return stride >= dim && stride <= INT32_MAX;
}

/* n K (or V) rows of one head as a row-major matrix with leading dim *ld:
 * in place when BLAS can address them, else copied into buf [n, dim]. */
static inline const float *mattn__block_rows(const float *base, int64_t stride, int64_t dim,
                                             int64_t n, float *buf, int64_t *ld)
{
    if (mattn__blas_rows_ok(stride, dim)) {
        *ld = stride;
        return base;
    }
    for (int64_t j = 0; j < n; j++)
        memcpy(buf + j * dim, base + j * stride, sizeof(float) * (size_t)dim);
    *ld = dim;
    return buf;
}

/* One worker's rows of a blockwise forward kernel (flash, splash): rows q
 * rows against blocks of bkv keys. */
typedef struct mattn__fwd_ws {
    float *q;    /* [rows, D] scaled q rows */
    float *s;    /* [rows, bkv] logits, then probabilities */
    float *acc;  /* [rows, Dv] unnormalised output */
    float *m, *l;
    float *kbuf; /* [bkv, D] K block when K rows are not BLAS-addressable */
    float *vbuf; /* [bkv, Dv] */
    mattn__row *row;
} mattn__fwd_ws;

/* Carves w's pieces from cv (sizes only while cv has no base). */
static inline void mattn__fwd_ws_carve(const mattn__problem *p, int64_t rows, int64_t bkv,
                                       mattn__carver *cv, mattn__fwd_ws *w)
{
    size_t n = (size_t)rows, b = (size_t)bkv, D = (size_t)p->D, Dv = (size_t)p->Dv;
    w->q = mattn__carve(cv, sizeof *w->q, n * D);
    w->s = mattn__carve(cv, sizeof *w->s, n * b);
    w->acc = mattn__carve(cv, sizeof *w->acc, n * Dv);
    w->m = mattn__carve(cv, sizeof *w->m, n);
    w->l = mattn__carve(cv, sizeof *w->l, n);
    w->kbuf = mattn__carve(cv, sizeof *w->kbuf, mattn__blas_rows_ok(p->k_ss, p->D) ? 0 : b * D);
    w->vbuf = mattn__carve(cv, sizeof *w->vbuf, mattn__blas_rows_ok(p->v_ss, p->Dv) ? 0 : b * Dv);
    w->row = mattn__carve(cv, sizeof *w->row, n);
}

#endif
