/* Kernel choice shared by the single-rank and distributed front doors. */
#ifndef MATTN_OPS_OPS_H
#define MATTN_OPS_OPS_H

#include "core/problem.h"

/* The kernel sdpa runs for a validated problem. MATTN_FORCE_REFERENCE=1 in
 * the environment forces vanilla. */
mattn_kernel mattn__sdpa_choose(const mattn__problem *p);

#endif
