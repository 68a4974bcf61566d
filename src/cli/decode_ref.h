/* The float64 reference behind `mattn decode --check` (SPEC §3-5).
 *
 * Written from the formulas row by row over a layout-free description of
 * the problem (where the key/value row of a sequence position lives), using
 * nothing from the decode kernel, so it can judge it. A sequence s offers
 * keys [lo[s], hi[s]); its qn query rows sit at its last positions
 * hi[s] - qn + i (bottom-right causal), window and chunk apply as SPEC §3. */
#ifndef MATTN_CLI_DECODE_REF_H
#define MATTN_CLI_DECODE_REF_H

#include <stdint.h>

typedef struct mattn__dref_problem {
    int64_t nseq, T, Hq, Hkv, D, Dv;
    const float *q; /* row t, head h at q + (t * Hq + h) * D */
    /* key j (global position) of sequence s, kv head hk: contiguous cache
     * (page_size 0) at k + ((s * S + j) * Hkv + hk) * D; paged at page
     * table[s * max_pages + j / page_size], slot j % page_size. V likewise. */
    const float *k, *v;
    int64_t S, page_size, max_pages;
    const int32_t *table;
    const int32_t *cu;     /* query rows [cu[s], cu[s+1]); NULL: row t = s only */
    const int32_t *lo;     /* [nseq] first key, NULL = 0 */
    const int32_t *hi;     /* [nseq] end of the keys (exclusive) */
    double scale, softcap; /* softcap 0: off */
    int64_t window_left, window_right, chunk;
    const float *sinks;    /* [Hq] or NULL */
    int64_t piece;         /* the library's split-KV piece (for the merge count) */
    int ranks;             /* sp ranks whose partials were merged */

    /* What the library returned: o row (t, h) at o + (t * Hq + h) * Dv; lse,
     * m, l (any may be NULL) at t * st + h * sh. */
    const float *o, *lse, *m, *l;
    int64_t st, sh;
} mattn__dref_problem;

typedef struct mattn__dref_report {
    int64_t rows;
    double max_err_o, max_err_lse, max_err_m, max_err_l;
    /* Largest |difference| / bound; the bounds are worst-case fp32 errors,
     * so a correct kernel stays <= 1; NaN or a wrong infinity gives +inf. */
    double max_ratio;
    int64_t worst_t, worst_h;
} mattn__dref_report;

/* Compares `rows` evenly spaced (t, h) rows of T * Hq (all when rows is 0 or
 * more than there are). MATTN_OK, or MATTN_ERR_NOMEM. */
int mattn__dref_check(const mattn__dref_problem *p, int64_t rows, mattn__dref_report *r);

#endif
