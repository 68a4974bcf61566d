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

#endif
