/* Per-row element work of the backward kernels, between their GEMMs.
 * Kernels differ in how they block rows and keys, never in this. */
#ifndef MATTN_KERNELS_ROWS_BWD_H
#define MATTN_KERNELS_ROWS_BWD_H

#include <stdint.h>

#include "core/problem.h"
#include "kernels/rows.h"
#include "kernels/vecmath.h"

/* s[0..n) holds scale * q.k for local keys j0..j0+n-1 of a row whose lse is
 * finite. On return s holds P = exp(s_final - max(lse, rowmax)) (0 for
 * disallowed keys; rowmax <= lse but for rounding),
 * capf (when the soft cap is on) the cap's derivative 1 - tanh^2(x / cap), and
 * w (when dropout is on) W = P*Z. Recomputing P from the forward's lse is
 * what spares the backward any T x S buffer. */
void mattn__bwd_row_probs(const mattn__problem *p, const mattn__vecmath *vm,
                          const mattn__row *r, float lse, float *s, float *capf, float *w,
                          int64_t j0, int64_t n);
/* The same, with a block-sparse mask tile row (splash): keys whose tile[j]
 * is 0 are excluded after the logit finishing, as in the forward. tile may
 * be NULL (then this is mattn__bwd_row_probs). */
void mattn__bwd_row_probs_tile(const mattn__problem *p, const mattn__vecmath *vm,
                               const mattn__row *r, float lse, float *s, float *capf, float *w,
                               int64_t j0, int64_t n, const uint8_t *tile);

/* dp[0..n) holds dW = dO_i.v_j. On return it holds dx = f*dS with
 *   dS = P*(Z*dW - D) = W*dW - P D   (W = P without dropout),
 * f the cap factor (capf, or 1 when NULL); dS itself (the gradient of the
 * final logit) is added to dbias[0..n) when dbias is not NULL. */
void mattn__bwd_row_dscore(const float *P, const float *W, const float *capf,
                           float delta, float *dp, float *dbias, int64_t n);

#endif
