/* Backward passes (SPEC §5): the gradients of o with respect to q, k, v, and
 * of the sinks and the bias when they were given, for the same problem and
 * options as the forward call that produced o and lse.
 *
 * With P the softmax probabilities (the sink in the normaliser), Z the
 * dropout keep factors (1/(1-p) or 0, the forward's u), W = P*Z (products
 * written * are element-wise) and o = W v:
 *   dv = W^T do,  dW = do v^T,  D_i = rowsum(do*o),  dS = P*(Z*dW - D),
 *   dbias = dS (summed over broadcast dims), dx = dS*(1 - tanh^2(x/cap)),
 *   dq = scale dx k,  dk = scale dx^T q (summed over the q heads of a group),
 *   dsink_h = -sum_{b,i} exp(sink_h - lse_i) D_i.
 * A fully masked row (lse = -inf) has zero gradients. docs/backward.md has
 * the derivation and the kernels' structure. */
/* The core header first, outside the guard: it includes every area header
 * in dependency order, so any of them may be included first. */
#include "mattn.h"

#ifndef MATTN_BACKWARD_H
#define MATTN_BACKWARD_H

#include "mattn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Arguments, the same for every operator:
 *   q, k, v, opts  exactly as given to the forward call;
 *   o [B, T, Hq, Dv] and lse [B, Hq, T] (contiguous) that the forward returned
 *     (lse is required; o gives D_i = rowsum(do*o));
 *   dout [B, T, Hq, Dv]  the gradient of the loss with respect to o;
 *   dq, dk, dv  outputs shaped like q, k, v (any non-overlapping strides);
 *   dsinks [Hq]  output, or NULL; non-NULL requires opts->sinks;
 *   dbias  output, contiguous [bias.batch, bias.heads, T, S] (the broadcast
 *     shape of opts->bias: broadcast dims are summed over), or NULL;
 *     non-NULL requires opts->bias.
 * Outputs are overwritten, never accumulated into, and must not overlap any
 * input. Returns MATTN_OK or an error with mattn_last_error() set; on error
 * the outputs are unspecified. */
MATTN_API int mattn_vanilla_backward(const mattn_tensor *q, const mattn_tensor *k,
                                     const mattn_tensor *v, const mattn_tensor *o,
                                     const float *lse, const mattn_tensor *dout,
                                     const mattn_tensor *dq, const mattn_tensor *dk,
                                     const mattn_tensor *dv, float *dsinks, float *dbias,
                                     const mattn_options *opts);

/* Blockwise: recomputes the probabilities from lse per block (no T x S
 * buffer), skips blocks that causal/window/chunk rule out, five OpenBLAS
 * GEMMs per block. Honours opts->threads, block_q and block_kv. */
MATTN_API int mattn_flash_backward(const mattn_tensor *q, const mattn_tensor *k,
                                   const mattn_tensor *v, const mattn_tensor *o,
                                   const float *lse, const mattn_tensor *dout,
                                   const mattn_tensor *dq, const mattn_tensor *dk,
                                   const mattn_tensor *dv, float *dsinks, float *dbias,
                                   const mattn_options *opts);

/* Picks the kernel as mattn_sdpa_forward does for the same arguments and
 * reports it in *chosen (may be NULL). */
MATTN_API int mattn_sdpa_backward(const mattn_tensor *q, const mattn_tensor *k,
                                  const mattn_tensor *v, const mattn_tensor *o,
                                  const float *lse, const mattn_tensor *dout,
                                  const mattn_tensor *dq, const mattn_tensor *dk,
                                  const mattn_tensor *dv, float *dsinks, float *dbias,
                                  const mattn_options *opts, mattn_kernel *chosen);

#ifdef __cplusplus
}
#endif

#endif
