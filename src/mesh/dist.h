/* Validation shared by the distributed front doors (partitioning and ring):
 * one rank's arguments checked against the global shape, and the resolved
 * local problem their kernels start from. Local only: callers agree on the
 * status (mattn__dist_agree) before any point-to-point message. */
#ifndef MATTN_MESH_DIST_H
#define MATTN_MESH_DIST_H

#include "core/problem.h"
#include "mattn.h"
#include "mesh/mesh.h"

typedef struct mattn__dist {
    mattn_shard shard;
    /* This rank has batch entries and heads: kernels have work. All ranks
     * of an sp group share this (they share their batch and head ranges). */
    int active;
    /* The global problem's options, checked against the global shape (its
     * tensor pointers are placeholders and must not be read). */
    mattn__problem global;
    /* The local problem, valid when active: local q/k/v/o/lse and segment
     * ids with their strides; mask and bias positioned at this rank's first
     * batch entry and q head but still indexed by GLOBAL query row and key
     * column (their row stride is the global one); sinks at this rank's
     * first q head; dropout batch/head offsets global; q_offset/kv_offset
     * those of the global problem (position of global row/key 0). */
    mattn__problem local;
} mattn__dist;

/* Checks every argument of a distributed forward call on this rank: the
 * shape, the local tensors against this rank's shard, the options against
 * the global shape. Returns a local status with a message. */
int mattn__dist_prepare(const mattn_mesh *m, const mattn_dist_shape *shape,
                        const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                        const mattn_tensor *o, float *lse, const mattn_options *opts,
                        mattn__dist *d);

/* Collective: agrees on the status and checks that every rank passed the
 * same global problem (sizes, head dims, the options that decide who talks
 * to whom and what every rank computes), the same operator and the same
 * ring options (defaults when ring is NULL). Ring and partitioning agree on
 * the same values, so a rank calling the other one is reported too. */
int mattn__dist_agree(const mattn_mesh *m, int local_status, const mattn_dist_shape *shape,
                      const mattn_tensor *q, const mattn_tensor *v, const mattn_options *opts,
                      mattn_op op, const mattn_ring_options *ring);

/* The single-rank options of this rank's shard (d->local): sinks, dropout
 * offsets, mask and bias sliced to the shard's batches and heads. */
mattn_options mattn__dist_local_options(const mattn_options *opts, const mattn__dist *d);

#endif
