/* The command's own float64 evaluation of SPEC §3-4, used by --check.
 *
 * It is written from the formulas, row by row, and uses nothing from the
 * library's kernels (only the public tensor and option structs to describe
 * the problem), so it can judge them. It is slow (naive loops over every key
 * of every checked row), hence the row sampling and the progress callback. */
#ifndef MATTN_CLI_REFERENCE_H
#define MATTN_CLI_REFERENCE_H

#include <stdint.h>

#include "mattn.h"

/* What to compare: the problem exactly as passed to the library, and what
 * it returned. lse [B, Hq, T] and weights [B, Hq, T, S] may be NULL. */
typedef struct mattn__ref_problem {
    const mattn_tensor *q, *k, *v, *o;
    const float *lse;
    const float *weights;
    const mattn_options *opts;
} mattn__ref_problem;

typedef struct mattn__ref_report {
    int64_t rows;                      /* (b, h, i) rows compared */
    double max_err_o, max_err_lse;     /* largest absolute differences */
    double max_err_weights;            /* 0 when weights are not compared */
    /* Largest |difference| / bound over every compared value. The bound is
     * the worst-case error of an fp32 evaluation (see reference.c), so a
     * correct kernel stays <= 1; a NaN or a wrong -inf gives +inf. */
    double max_ratio;
    int64_t worst_row;                 /* flat row (b * Hq + h) * T + i of max_ratio */
} mattn__ref_report;

/* Called now and then with the number of rows done out of `total`. */
typedef void (*mattn__ref_progress)(void *ctx, int64_t done, int64_t total);

/* Compares `rows` evenly spaced rows of the B * Hq * T (all of them when rows
 * is 0 or larger), on `threads` threads (>= 1). Returns MATTN_OK or
 * MATTN_ERR_NOMEM; the verdict is in *report. */
int mattn__ref_check(const mattn__ref_problem *p, int64_t rows, int threads,
                     mattn__ref_progress progress, void *ctx, mattn__ref_report *report);

/* Number of (query, key) pairs of one (batch, head) that causal, window and
 * chunk allow (segment ids and the dense mask are not subtracted): the work
 * a kernel that skips structurally masked blocks does. One interval per row,
 * so O(T). */
int64_t mattn__ref_structural_pairs(const mattn_options *opts, int64_t T, int64_t S);

/* ------------------------------------------------------------------ gradients */

/* The backward to compare (`mattn grad --check`): the forward problem, the
 * loss gradient dout [B, T, Hq, Dv] and the library's dq, dk, dv (shaped
 * like q, k, v) and dsinks [Hq] (may be NULL). */
typedef struct mattn__ref_grad_problem {
    const mattn_tensor *q, *k, *v, *dout, *dq, *dk, *dv;
    const float *dsinks;
    const mattn_options *opts;
} mattn__ref_grad_problem;

typedef struct mattn__ref_grad_report {
    int64_t rows, kv_rows; /* dq rows (b, h, i) and dk/dv rows (b, hk, j) compared */
    double max_err_dq, max_err_dk, max_err_dv, max_err_dsinks;
    double max_ratio;        /* largest |difference| / bound, as for the forward */
    const char *worst_what;  /* "dq", "dk", "dv" or "dsinks" */
    int64_t worst_index;     /* flat row of the worst value in its array's (b, h, i) order */
} mattn__ref_grad_report;

/* Compares `rows` evenly spaced dq rows and `rows` evenly spaced dk/dv rows
 * (all when rows is 0 or larger), and dsinks when every row is compared
 * (its reference needs every row). A dk/dv row needs the statistics of
 * every query row of its (batch, kv-head group), computed once per group it
 * touches. MATTN_OK or MATTN_ERR_NOMEM; the verdict is in *report. */
int mattn__ref_grad_check(const mattn__ref_grad_problem *p, int64_t rows, int threads,
                          mattn__ref_grad_report *report);

#endif
