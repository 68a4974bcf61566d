/* The resolved description of one attention problem, shared by every kernel.
 *
 * Front doors build it from the public arguments (mattn__problem_init checks
 * every argument once); distributed code then narrows it to a shard by moving
 * pointers and offsets. Kernels read only this struct. */
#ifndef MATTN_CORE_PROBLEM_H
#define MATTN_CORE_PROBLEM_H

#include <stdint.h>

#include "mattn.h"

typedef struct mattn__problem {
    int64_t B, T, S, Hq, Hkv, D, Dv;
    int64_t group; /* Hq / Hkv: q head h reads kv head h / group */

    /* Element strides over (batch, seq, head); the last dim is contiguous. */
    const float *q;
    int64_t q_sb, q_st, q_sh;
    const float *k;
    int64_t k_sb, k_ss, k_sh;
    const float *v;
    int64_t v_sb, v_ss, v_sh;
    float *o;
    int64_t o_sb, o_st, o_sh;
    float *lse; /* [B, Hq, T] with strides (lse_sb, lse_sh, 1); NULL: not wanted */
    int64_t lse_sb, lse_sh;

    /* Logits: s = scale * q.k, capped, plus bias. */
    float scale;
    float softcap; /* 0: off */
    const float *bias; /* strides are 0 along broadcast dims; NULL: none */
    int64_t bias_sb, bias_sh, bias_st;
    const float *sinks; /* [Hq], indexed by this problem's head; NULL: none */

    /* Which keys a query may see (SPEC §3). */
    int causal;
    int64_t q_offset, kv_offset;
    int64_t window_left, window_right; /* -1: unbounded */
    int64_t chunk;                     /* 0: off */
    const int32_t *q_seg;  /* [B, T] with stride q_seg_sb; NULL: none */
    const int32_t *kv_seg; /* [B, S] with stride kv_seg_sb */
    int64_t q_seg_sb, kv_seg_sb;
    const uint8_t *mask; /* strides 0 along broadcast dims; NULL: none */
    int64_t mask_sb, mask_sh, mask_st;

    /* Dropout: keep iff u24 >= dropout_threshold (u24 = u * 2^24). */
    float dropout_p;
    uint32_t dropout_threshold;
    uint64_t dropout_seed;
    int64_t dropout_b0, dropout_h0; /* global index of batch 0 / head 0 */

    int threads;
    int block_q, block_kv; /* 0: kernel default */
} mattn__problem;

/* Validates the public arguments and fills *p. Returns MATTN_OK or an error
 * with mattn_last_error() set. lse may be NULL. */
int mattn__problem_init(mattn__problem *p, const mattn_tensor *q,
                        const mattn_tensor *k, const mattn_tensor *v,
                        const mattn_tensor *o, float *lse,
                        const mattn_options *opts);

/* Upper bound on options.threads: kernels keep one workspace pointer per
 * thread on the stack. */
#define MATTN__THREADS_MAX 1024

/* True when two elements of t share an address (a zero or too small stride
 * on a dim of size > 1). Outputs like that would be silent wrong answers. */
int mattn__tensor_overlaps(const mattn_tensor *t);

/* Checks gradient-like tensor t (named name) against like: not NULL, the
 * same shape, non-negative strides, data when not empty, and, when it is an
 * output, no overlapping elements. scope ("" or "local ") prefixes the
 * names in the shape message. MATTN_OK or the error, with its message. */
int mattn__tensor_check_like(const char *scope, const char *name, const mattn_tensor *t,
                             const char *like_name, const mattn_tensor *like, int output);

/* Number of worker threads an options value asks for (0 = all usable CPUs). */
int mattn__resolve_threads(int requested);

#endif
