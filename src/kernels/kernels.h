/* Kernel entry points. A kernel computes on local memory from a validated
 * problem and never calls MPI; front doors (src/ops) choose among them. */
#ifndef MATTN_KERNELS_KERNELS_H
#define MATTN_KERNELS_KERNELS_H

#include "core/problem.h"

/* weights: [B, Hq, T, S] probabilities before dropout, or NULL. */
int mattn__vanilla_forward_kernel(const mattn__problem *p, float *weights);

int mattn__flash_forward_kernel(const mattn__problem *p);

#endif
