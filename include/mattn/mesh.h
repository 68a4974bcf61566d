/* The mesh: a dp x tp x sp layout of the ranks of an MPI communicator
 * (SPEC §7). dp splits the batch, tp the kv-head groups, sp the sequence;
 * sp varies fastest across consecutive ranks:
 *   sp_rank = rank % sp,  tp_rank = (rank / sp) % tp,  dp_rank = rank / (sp * tp).
 * Every distributed operator takes a mesh. */
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

#ifdef __cplusplus
}
#endif

#endif
