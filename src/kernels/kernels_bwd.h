/* Backward kernel entry points and what they share.
 *
 * A backward kernel reads a validated problem (p->o and p->lse are inputs
 * here: the forward's output and log-sum-exp) plus the gradient description
 * below, computes on local memory and never calls MPI. With `accumulate` set
 * it adds into dq/dk/dv/dsinks/dbias instead of overwriting them, so a
 * distributed caller can run it on sub-problems (a kv shard with its
 * kv_offset, a q shard with its q_offset) and sum the contributions: dk/dv of
 * a travelling kv shard, dq of the resident q shard. */
#ifndef MATTN_KERNELS_KERNELS_BWD_H
#define MATTN_KERNELS_KERNELS_BWD_H

#include <stdint.h>

#include "core/problem.h"

typedef struct mattn__grad {
    /* dO [B, T, Hq, Dv], strides as a problem tensor. */
    const float *dout;
    int64_t do_sb, do_st, do_sh;
    /* D_i = rowsum(dO*O) [B, Hq, T] with strides (delta_sb, delta_sh, 1), or
     * NULL: computed from p->o and dout. A caller that splits the keys over
     * several calls computes it once and passes it. */
    const float *delta;
    int64_t delta_sb, delta_sh;
    /* Outputs, fp32, strides as the matching inputs (non-overlapping). */
    float *dq;
    int64_t dq_sb, dq_st, dq_sh;
    float *dk;
    int64_t dk_sb, dk_ss, dk_sh;
    float *dv;
    int64_t dv_sb, dv_ss, dv_sh;
    /* [Hq] or NULL. It depends only on the q rows: a caller splitting the
     * keys over several calls asks for it in one of them. */
    float *dsinks;
    /* dbias element (b, h, i, j) at b*sb + h*sh + i*st + j; a zero stride
     * along a broadcast dim sums over it. NULL: not wanted. */
    float *dbias;
    int64_t dbias_sb, dbias_sh, dbias_st;
    int accumulate;
} mattn__grad;

int mattn__vanilla_backward_kernel(const mattn__problem *p, const mattn__grad *g);
int mattn__flash_backward_kernel(const mattn__problem *p, const mattn__grad *g);

/* ---------------------------------------------------------------- shared */

/* Where worker w accumulates dbias: the output itself, or a private buffer
 * when tasks on different workers would add into the same broadcast entry. */
typedef struct mattn__dbias_view {
    float *data; /* NULL: dbias not wanted */
    int64_t sb, sh, st;
} mattn__dbias_view;

/* What both kernels set up before their parallel loop and tear down after. */
typedef struct mattn__bwd_prep {
    const float *delta; /* D_i, [B, Hq, T] with strides (delta_sb, delta_sh, 1) */
    int64_t delta_sb, delta_sh;
    mattn__dbias_view *dbias; /* [threads] */
    int threads;
    float *delta_buf;  /* owned */
    float *dbias_buf;  /* owned: private dbias of workers 1.. */
    mattn__dbias_view dbias_one[1];
} mattn__bwd_prep;

/* D_i (computed unless g->delta), dsinks, zeroed dbias (unless accumulate)
 * and the per-worker dbias views. Kernels hand tasks out by batch entry and
 * kv head (all q heads of a group in one task, keys possibly split), so
 * only a dbias broadcast over the batch or over kv heads can be shared. */
int mattn__bwd_prepare(const mattn__problem *p, const mattn__grad *g, int threads,
                       mattn__bwd_prep *prep);
/* The dbias view worker w adds into. */
static inline const mattn__dbias_view *mattn__bwd_dbias_view(const mattn__bwd_prep *prep,
                                                             int worker)
{
    return prep->dbias_buf ? &prep->dbias[worker] : &prep->dbias[0];
}

/* Adds the private dbias buffers into the output and frees what prepare took. */
void mattn__bwd_finish(const mattn__problem *p, const mattn__grad *g, mattn__bwd_prep *prep);

/* The whole backward of a problem with no batch entry (B = 0): dsinks and
 * dbias as prepare leaves them, nothing else, no workspace sized by T or S. */
int mattn__bwd_empty(const mattn__problem *p, const mattn__grad *g);

/* n rows of `dim` floats: dst row r (at dst + r * dst_stride) = alpha * src
 * row r (at src + r * src_stride), or += with accumulate. */
void mattn__bwd_store_rows(float *dst, int64_t dst_stride, const float *src,
                           int64_t src_stride, int64_t n, int64_t dim, float alpha,
                           int accumulate);

#endif
