/* The mesh: a dp x tp x sp layout of the ranks of an MPI communicator
 * (SPEC §7). dp splits the batch, tp the kv-head groups, sp the sequence;
 * sp varies fastest across consecutive ranks:
 *   sp_rank = rank % sp,  tp_rank = (rank / sp) % tp,  dp_rank = rank / (sp * tp).
 * Every distributed operator takes a mesh.
 *
 * Distributed calls follow one rule for their arguments: tensors that are
 * sharded (q, k, v, o, lse, segment ids) are passed as this rank's shard;
 * the small broadcastable ones (sinks [Hq], mask and bias [B|1, Hq|1, T, S])
 * are passed whole, in their global shape, on every rank, with the same
 * contents (compared by hash: a difference is MATTN_ERR_ARG on every rank).
 * Positions, offsets and dropout indices in mattn_options are those of the
 * global problem. */
/* The core header first, outside the guard: it includes every area header
 * in dependency order, so any of them may be included first. */
#include "mattn.h"

#ifndef MATTN_MESH_H
#define MATTN_MESH_H

#include <mpi.h>

#include "mattn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mattn_mesh mattn_mesh;

/* Collective over comm. Duplicates comm (the library never touches comm
 * again), sets MPI_ERRORS_RETURN on its copy, and checks on every rank that
 * dp * tp * sp equals the communicator size and that all ranks passed the
 * same shape; on failure every rank gets the same error and *mesh = NULL. */
MATTN_API int mattn_mesh_create(MPI_Comm comm, int dp, int tp, int sp, mattn_mesh **mesh);
/* Collective. NULL is allowed. */
MATTN_API void mattn_mesh_free(mattn_mesh *mesh);

MATTN_API void mattn_mesh_shape(const mattn_mesh *mesh, int *dp, int *tp, int *sp);
MATTN_API void mattn_mesh_coords(const mattn_mesh *mesh, int *dp_rank, int *tp_rank,
                                 int *sp_rank);
MATTN_API int mattn_mesh_rank(const mattn_mesh *mesh);
MATTN_API int mattn_mesh_size(const mattn_mesh *mesh);
/* The mesh's own (duplicated) communicator. */
MATTN_API MPI_Comm mattn_mesh_comm(const mattn_mesh *mesh);

/* The uneven split rule used on every axis: n items over `parts` parts, the
 * first n % parts parts get one more. Part `index` holds [*start, *start + *count). */
MATTN_API void mattn_split(int64_t n, int parts, int index, int64_t *start, int64_t *count);

/* ---------------------------------------------------------------- layouts */

/* How the sp axis cuts a sequence (SPEC §7). */
typedef enum mattn_seq_layout {
    /* rank r holds one run of tokens: part r of mattn_split(n, sp) */
    MATTN_SEQ_CONTIGUOUS = 0,
    /* the sequence is cut into 2*sp chunks by mattn_split(n, 2*sp); rank r
     * holds chunks r and 2*sp-1-r, in that order. Balances causal work. */
    MATTN_SEQ_ZIGZAG = 1
} mattn_seq_layout;

MATTN_API const char *mattn_seq_layout_name(mattn_seq_layout layout);

/* The runs of global indices [start[i], start[i] + count[i]) that part
 * `index` of `parts` holds, in the order they are stored locally. Returns
 * the number of runs (0, 1 or 2): empty runs are dropped and adjacent ones
 * merged, so zigzag with parts = 1 is one run. Invalid arguments give 0. */
MATTN_API int mattn_seq_split(int64_t n, int parts, int index, mattn_seq_layout layout,
                              int64_t start[2], int64_t count[2]);

/* The global sizes of a distributed attention problem, the same on every
 * rank: q [B, T, Hq, D], k/v [B, S, Hkv, D|Dv]. */
typedef struct mattn_dist_shape {
    int64_t batch, q_len, kv_len, q_heads, kv_heads;
    mattn_seq_layout layout; /* how sp cuts both q_len and kv_len */
} mattn_dist_shape;

/* What one rank holds: batch entries [batch_start, +batch_count) (dp),
 * kv heads [kv_head_start, +kv_head_count) with their q heads (tp, whole
 * groups: a q head travels with its kv head), and the query / key rows of
 * the runs below (sp), stored locally in run order. */
typedef struct mattn_shard {
    int64_t batch_start, batch_count;
    int64_t q_head_start, q_head_count;
    int64_t kv_head_start, kv_head_count;
    int64_t q_len, kv_len; /* local lengths: sums of the runs' counts */
    int q_runs, kv_runs;   /* 0, 1 or 2 */
    int64_t q_run_start[2], q_run_count[2];   /* global row ranges */
    int64_t kv_run_start[2], kv_run_count[2]; /* global key ranges */
} mattn_shard;

/* The shard of mesh rank `rank` (any rank, not only the caller's; no
 * communication). MATTN_ERR_ARG / MATTN_ERR_SHAPE for an invalid shape or
 * rank. A rank may hold an empty shard (T < sp, tp > Hkv, B < dp). */
MATTN_API int mattn_mesh_shard(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                               int rank, mattn_shard *shard);

/* Collective: the global shape from every rank's local q and k shards
 * (batch summed over dp, heads over tp, lengths over sp, one allreduce),
 * then checked: each rank's local sizes must be what the split rule gives.
 * Tensors with zero heads are allowed here for ranks with an empty head
 * shard. */
MATTN_API int mattn_mesh_infer_shape(const mattn_mesh *mesh, const mattn_tensor *q,
                                     const mattn_tensor *k, mattn_seq_layout layout,
                                     mattn_dist_shape *shape);

/* ---------------------------------------------------------------- data movement */

/* Which axes a sharded array follows. */
typedef enum mattn_shard_role {
    MATTN_SHARD_Q = 0,  /* [B, T, Hq, *]: q, o; lse [B, Hq, T]; q segment ids [B, T] */
    MATTN_SHARD_KV = 1  /* [B, S, Hkv, *]: k, v; kv segment ids [B, S] */
} mattn_shard_role;

/* Collective over the mesh. Root holds the global tensor (any strides; only
 * read on root, may be NULL elsewhere); every rank receives its shard into
 * `local`, whose sizes must be the shard's (see mattn_mesh_shard) and whose
 * dim must equal the global one. Bad arguments on any rank give the same
 * error on every rank before any data moves. */
MATTN_API int mattn_mesh_scatter(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                 mattn_shard_role role, int root,
                                 const mattn_tensor *global, const mattn_tensor *local);
/* The reverse: every rank's shard into the global tensor on root. Each
 * element of the global tensor is held by exactly one rank. */
MATTN_API int mattn_mesh_gather(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                mattn_shard_role role, int root, const mattn_tensor *local,
                                const mattn_tensor *global);
/* lse: global [B, Hq, T] contiguous <-> local [B_l, Hq_l, T_l] contiguous. */
MATTN_API int mattn_mesh_scatter_lse(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                     int root, const float *global, float *local);
MATTN_API int mattn_mesh_gather_lse(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                    int root, const float *local, float *global);
/* Segment ids: global [B, T] (role Q) or [B, S] (role KV) contiguous ->
 * local [B_l, T_l] or [B_l, S_l]; every tp rank gets the same rows. */
MATTN_API int mattn_mesh_scatter_segment_ids(const mattn_mesh *mesh,
                                             const mattn_dist_shape *shape,
                                             mattn_shard_role role, int root,
                                             const int32_t *global, int32_t *local);

/* ---------------------------------------------------------------- forward */

/* The operators a mesh can run. */
typedef enum mattn_op {
    MATTN_OP_VANILLA = 0,
    MATTN_OP_FLASH = 1,
    MATTN_OP_SDPA = 2,
    MATTN_OP_SPLASH = 3,
    MATTN_OP_RING = 4
} mattn_op;

MATTN_API const char *mattn_op_name(mattn_op op);

typedef struct mattn_ring_options mattn_ring_options; /* mattn/ring.h */

/* Collective: the distributed forward front door. q, k, v, o (and lse,
 * [B_l, Hq_l, T_l], may be NULL) are this rank's shards; see the argument
 * rule at the top of this header.
 *  - vanilla, flash, sdpa: shard_map-style partitioning over dp x tp. Each
 *    rank runs the single-rank operator on its batch entries and kv-head
 *    groups; nothing is communicated but the status agreement. sp must be 1
 *    (else MATTN_ERR_UNSUPPORTED: use ring). *chosen (may be NULL) gets the
 *    kernel sdpa picked.
 *  - ring: mattn_ring_forward_ex with `ring` (NULL = defaults).
 *  - splash: as vanilla/flash, the mask derived from the options (see
 *    mattn_mesh_splash_forward in mattn/splash.h for a mask object).
 * Every rank returns the same status. */
MATTN_API int mattn_mesh_forward(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                 mattn_op op, const mattn_tensor *q, const mattn_tensor *k,
                                 const mattn_tensor *v, const mattn_tensor *o, float *lse,
                                 const mattn_options *opts, const mattn_ring_options *ring,
                                 mattn_kernel *chosen);

/* ---------------------------------------------------------------- backward */

/* Collective: the distributed backward front door (SPEC §5), for the same
 * mesh, shape, operator and options as the forward call. Tensors are this
 * rank's shards: q, k, v, o, lse (required) as for the forward, dout like
 * o, dq / dk / dv like q / k / v (overwritten). Gradients of the small
 * global arguments are global and whole on every rank, summed over the mesh
 * by one allreduce each:
 *   dsinks [Hq]  (may be NULL; non-NULL requires sinks);
 *   dbias  contiguous [bias.batch, bias.heads, T, S], the broadcast shape of
 *          opts->bias (may be NULL; non-NULL requires a bias). Under the
 *          ring each rank computes the rows of its query shard as the key
 *          blocks pass, and the allreduce moves the whole T x S array (as
 *          large as the bias every rank already holds): for long sequences
 *          it can cost more than the attention's own traffic.
 * Whether dsinks / dbias are NULL must be the same on every rank.
 *  - vanilla, flash, sdpa, splash: the single-rank backward on this rank's
 *    batch entries and kv-head groups (sp must be 1), no communication in
 *    the attention;
 *  - ring: mattn_ring_backward_ex with `ring` (NULL = defaults).
 * Every rank returns the same status. */
MATTN_API int mattn_mesh_backward(const mattn_mesh *mesh, const mattn_dist_shape *shape,
                                  mattn_op op, const mattn_tensor *q, const mattn_tensor *k,
                                  const mattn_tensor *v, const mattn_tensor *o,
                                  const float *lse, const mattn_tensor *dout,
                                  const mattn_tensor *dq, const mattn_tensor *dk,
                                  const mattn_tensor *dv, float *dsinks, float *dbias,
                                  const mattn_options *opts, const mattn_ring_options *ring);

#ifdef __cplusplus
}
#endif

#endif
