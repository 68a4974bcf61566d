/* Which keys a query row may see (SPEC §3), as cheap interval arithmetic.
 *
 * causal, window and chunk each allow one interval of key positions per query
 * position, so their intersection is one interval too: that is what lets
 * kernels skip whole blocks and mask partial ones with two comparisons.
 * Segment ids and the boolean mask are element-wise and are applied apart. */
#ifndef MATTN_CORE_POSITIONS_H
#define MATTN_CORE_POSITIONS_H

#include <stdint.h>

#include "core/problem.h"

/* Python-style floor division, so chunk ids stay correct for negative
 * positions (possible with negative offsets). */
static inline int64_t mattn__floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* Local key indices [*lo, *hi) allowed for query row i by causal, window and
 * chunk, clipped to [0, S). Empty when *lo >= *hi. */
static inline void mattn__key_range(const mattn__problem *p, int64_t i,
                                    int64_t *lo, int64_t *hi)
{
    int64_t qp = p->q_offset + i;
    int64_t first = INT64_MIN / 4, last = INT64_MAX / 4; /* absolute, inclusive */
    if (p->causal && qp < last)
        last = qp;
    if (p->window_left >= 0 && qp - p->window_left > first)
        first = qp - p->window_left;
    if (p->window_right >= 0 && qp + p->window_right < last)
        last = qp + p->window_right;
    if (p->chunk > 0) {
        int64_t c0 = mattn__floor_div(qp, p->chunk) * p->chunk;
        if (c0 > first)
            first = c0;
        if (c0 + p->chunk - 1 < last)
            last = c0 + p->chunk - 1;
    }
    int64_t l = first - p->kv_offset, h = last - p->kv_offset + 1;
    *lo = l < 0 ? 0 : (l > p->S ? p->S : l);
    *hi = h < 0 ? 0 : (h > p->S ? p->S : h);
    if (*hi < *lo)
        *hi = *lo;
}

/* True when every structural predicate is off: all keys are in range. */
static inline int mattn__no_structure(const mattn__problem *p)
{
    return !p->causal && p->window_left < 0 && p->window_right < 0 && p->chunk == 0;
}

#endif
