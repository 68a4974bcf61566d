/* Kernel choice shared by the single-rank and distributed front doors. */
#ifndef MATTN_OPS_OPS_H
#define MATTN_OPS_OPS_H

#include "core/problem.h"

/* The kernel sdpa runs for a validated problem. MATTN_FORCE_REFERENCE=1 in
 * the environment forces vanilla. */
mattn_kernel mattn__sdpa_choose(const mattn__problem *p);

/* sdpa's splash path (src/ops/splash.c). suits: the problem has a mask
 * splash can skip blocks of (causal/window/chunk, or a boolean mask shared
 * by the batch). sdpa_splash: builds mask info from the problem's own
 * predicates and runs splash, or flash when under 10% of the blocks are
 * empty; *chosen (may be NULL) says which ran. */
int mattn__splash_suits(const mattn__problem *p);
int mattn__sdpa_splash(const mattn__problem *p, mattn_kernel *chosen);

struct mattn__grad; /* kernels/kernels_bwd.h */

/* The backward of what mattn__sdpa_splash runs (the same choice). */
int mattn__sdpa_splash_backward(const mattn__problem *p, const struct mattn__grad *g,
                                mattn_kernel *chosen);

/* The backward front doors' validation (src/ops/backward.c): the forward's
 * arguments and the gradient arguments, into a problem and a gradient
 * description. */
int mattn__backward_init(mattn__problem *p, struct mattn__grad *g, const mattn_tensor *q,
                         const mattn_tensor *k, const mattn_tensor *v, const mattn_tensor *o,
                         const float *lse, const mattn_tensor *dout, const mattn_tensor *dq,
                         const mattn_tensor *dk, const mattn_tensor *dv, float *dsinks,
                         float *dbias, const mattn_options *opts);

#endif
