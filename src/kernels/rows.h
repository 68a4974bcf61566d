/* Per-query-row context and the logit "finishing" every kernel applies to
 * raw scaled dot products: soft cap, bias, then exclusion of disallowed keys
 * (SPEC §4 order). Kernels differ in how they block the work, never in this. */
#ifndef MATTN_KERNELS_ROWS_H
#define MATTN_KERNELS_ROWS_H

#include <stdint.h>

#include "core/problem.h"
#include "kernels/vecmath.h"

typedef struct mattn__row {
    int64_t lo, hi;        /* local keys [lo, hi) allowed by causal/window/chunk */
    int32_t q_seg;         /* this row's segment id (segments on) */
    const int32_t *kv_seg; /* kv segment ids [S] of this batch entry, or NULL */
    const uint8_t *mask;   /* mask row [S], or NULL */
    const float *bias;     /* bias row [S], or NULL */
    uint64_t drop_key;     /* dropout row key (dropout on) */
} mattn__row;

/* Fills the context of query row i of batch entry b, q head h (local). */
void mattn__row_init(const mattn__problem *p, int64_t b, int64_t h, int64_t i,
                     mattn__row *r);

/* True when every key in [j0, j0+n) is allowed for the row with no
 * element-wise test: inside [lo, hi), and no segment ids or mask. */
static inline int mattn__row_covers(const mattn__row *r, int64_t j0, int64_t n)
{
    return r->lo <= j0 && j0 + n <= r->hi && r->kv_seg == NULL && r->mask == NULL;
}

/* True when no key in [j0, j0+n) can be allowed for the row. */
static inline int mattn__row_misses(const mattn__row *r, int64_t j0, int64_t n)
{
    return r->hi <= j0 || r->lo >= j0 + n || r->lo >= r->hi;
}

/* s[0..n) holds scale * q.k for local keys j0..j0+n-1. Applies the soft cap
 * and bias and sets disallowed entries to -inf. */
void mattn__row_logits(const mattn__problem *p, const mattn__vecmath *vm,
                       const mattn__row *r, float *s, int64_t j0, int64_t n);

/* Applies dropout to the probabilities w[0..n) of keys j0..j0+n-1. */
static inline void mattn__row_dropout(const mattn__problem *p,
                                      const mattn__vecmath *vm,
                                      const mattn__row *r, float *w, int64_t j0,
                                      int64_t n)
{
    vm->dropout(w, n, r->drop_key, p->kv_offset + j0, p->dropout_threshold,
                1.0f / (1.0f - p->dropout_p));
}

#endif
