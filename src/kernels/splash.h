/* The splash kernels (splash_fwd.c, splash_bwd.c). Like every kernel they
 * compute on local memory from a validated problem and never call MPI. */
#ifndef MATTN_KERNELS_SPLASH_H
#define MATTN_KERNELS_SPLASH_H

#include "core/problem.h"
#include "kernels/kernels_bwd.h"
#include "kernels/mask_info.h"

/* Attention over the non-empty blocks of `info`, ANDed with every predicate
 * of the problem itself (causal/window/chunk, segment ids, boolean mask).
 * The info must describe this problem: info->T == p->T, info->S == p->S,
 * the same q/kv offsets, and 1 or p->Hq heads (the front door checks). The
 * problem's block sizes are ignored: the info's are used. */
int mattn__splash_forward_kernel(const mattn__problem *p, const mattn_splash_info *info);

/* The gradients of that attention (splash_bwd.c): p->o and p->lse are the
 * forward's, g as for the flash backward kernel (accumulate, a precomputed
 * D_i and dsinks/dbias work alike). Same contract on the info. */
int mattn__splash_backward_kernel(const mattn__problem *p, const mattn__grad *g,
                                  const mattn_splash_info *info);

#endif
