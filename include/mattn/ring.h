/* Ring attention: sequence-sharded attention over the sp axis of a mesh
 * (SPEC §7). Each rank keeps its query shard; key/value shards (with their
 * kv segment ids) travel between the sp ranks as one packed message per
 * step, carrying only the Hkv heads, and the per-step (o, lse) partials are
 * merged in fp32. Pairs of (query run, key run) that causal/window/chunk (or
 * a boolean mask shared by the batch) rule out are never computed, and ranks
 * whose keys no local query may see are never exchanged with
 * (docs/distributed.md describes the protocol). */
/* The core header first, outside the guard: it includes every area header
 * in dependency order, so any of them may be included first. */
#include "mattn.h"

#ifndef MATTN_RING_H
#define MATTN_RING_H

#include "mattn/mesh.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How the K/V messages move. */
typedef enum mattn_ring_comm {
    /* MPI_Isend/MPI_Irecv into a second buffer while the current step
     * computes, with MPI_Testall between compute pieces so the transfer
     * progresses during compute. The default. */
    MATTN_RING_COMM_OVERLAP = 0,
    /* One blocking MPI_Sendrecv between steps. */
    MATTN_RING_COMM_SENDRECV = 1
} mattn_ring_comm;

MATTN_API const char *mattn_ring_comm_name(mattn_ring_comm comm);

/* (The typedef mattn_ring_options is in mattn/mesh.h.) */
struct mattn_ring_options {
    mattn_ring_comm comm;
    /* Benchmarking only: skip every transfer and compute each step on this
     * rank's own packed K/V instead (same work, wrong answer), to measure
     * what communication costs. */
    int skip_comm;
};

MATTN_API mattn_ring_options mattn_ring_options_default(void);

/* What one call did on this rank (for tests and benchmarks). */
typedef struct mattn_ring_stats {
    int64_t steps;             /* steps with compute, the local one included */
    int64_t kernel_calls;      /* flash kernel invocations */
    int64_t messages_sent, messages_received;
    int64_t bytes_sent, bytes_received;
    double seconds_total;      /* the whole call */
    double seconds_compute;    /* kernels and merges */
    double seconds_wait;       /* blocked in MPI (Sendrecv / Waitall) */
} mattn_ring_stats;

/* Collective over the mesh (every rank calls it, whatever its shard). q and o
 * are [B_l, T_l, Hq_l, D|Dv], k and v [B_l, S_l, Hkv_l, D|Dv] with any
 * strides, lse [B_l, Hq_l, T_l] (may be NULL), where the local sizes are the
 * shard's (mattn_mesh_shard). q/kv segment ids in opts are local shards
 * [B_l, T_l] / [B_l, S_l]; sinks, mask and bias are global (mattn/mesh.h).
 * The result equals the single-rank result of the global problem for every
 * option of SPEC §3-4, to fp32 rounding. Every rank returns the same status;
 * a bad argument on one rank is reported everywhere before any message. */
MATTN_API int mattn_ring_forward(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                 const mattn_tensor *q, const mattn_tensor *k,
                                 const mattn_tensor *v, const mattn_tensor *o, float *lse,
                                 const mattn_options *opts);

/* The same with ring options (NULL = defaults) and this rank's statistics
 * (may be NULL). */
MATTN_API int mattn_ring_forward_ex(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                    const mattn_tensor *q, const mattn_tensor *k,
                                    const mattn_tensor *v, const mattn_tensor *o, float *lse,
                                    const mattn_options *opts, const mattn_ring_options *ring,
                                    mattn_ring_stats *stats);

/* ---------------------------------------------------------------- backward */

/* Collective: the gradients of the ring forward (SPEC §5, mattn/backward.h)
 * for the same mesh, shape and options. Every tensor is this rank's shard:
 * q, k, v, o as given to / returned by the forward, lse [B_l, Hq_l, T_l]
 * (required), dout like o, dq like q, dk like k, dv like v (any
 * non-overlapping strides; overwritten). dsinks (may be NULL; non-NULL
 * requires sinks, and then on every rank) is GLOBAL [Hq]: every rank
 * returns the whole gradient, summed over the mesh. The bias gradient is
 * mattn_mesh_backward's (op MATTN_OP_RING, the same code path).
 *
 * Each rank keeps q, o, dout and lse and computes D_i = rowsum(dout*o) once;
 * K/V travel as in the forward, and dK/dV travel WITH them in the same
 * packed message, accumulating in fp32 on every rank the block visits, so
 * the block arrives home with its complete gradient (docs/distributed.md).
 * Every rank returns the same status. */
MATTN_API int mattn_ring_backward(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                  const mattn_tensor *q, const mattn_tensor *k,
                                  const mattn_tensor *v, const mattn_tensor *o,
                                  const float *lse, const mattn_tensor *dout,
                                  const mattn_tensor *dq, const mattn_tensor *dk,
                                  const mattn_tensor *dv, float *dsinks,
                                  const mattn_options *opts);

/* The same with ring options (NULL = defaults; both comm modes move the
 * backward's messages with one blocking exchange per hop, see the docs) and
 * this rank's statistics (may be NULL). */
MATTN_API int mattn_ring_backward_ex(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                     const mattn_tensor *q, const mattn_tensor *k,
                                     const mattn_tensor *v, const mattn_tensor *o,
                                     const float *lse, const mattn_tensor *dout,
                                     const mattn_tensor *dq, const mattn_tensor *dk,
                                     const mattn_tensor *dv, float *dsinks,
                                     const mattn_options *opts, const mattn_ring_options *ring,
                                     mattn_ring_stats *stats);

#ifdef __cplusplus
}
#endif

#endif
