/* Private side of the shard geometry (shard.c): which part of a global
 * problem each mesh rank holds. Pure arithmetic, no MPI. */
#ifndef MATTN_MESH_SHARD_H
#define MATTN_MESH_SHARD_H

#include "mattn.h"
#include "mesh/mesh.h"

/* MATTN_OK, or an error with a message for a NULL or invalid shape. */
int mattn__shape_check(const mattn_dist_shape *shape);

/* The shard of `rank` on a dp x tp x sp mesh; shape must be valid. */
void mattn__shard_of(const mattn_dist_shape *shape, int dp, int tp, int sp, int rank,
                     mattn_shard *shard);

/* Longest local kv length over the sp ranks (the ring's buffer capacity). */
int64_t mattn__shard_kv_len_max(const mattn_dist_shape *shape, int sp);

#endif
