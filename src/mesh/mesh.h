/* Private view of the mesh, and the status agreement every distributed call
 * makes before any point-to-point message. */
#ifndef MATTN_MESH_MESH_H
#define MATTN_MESH_MESH_H

#include <mpi.h>

#include "mattn.h"

struct mattn_mesh {
    MPI_Comm comm;    /* duplicate of the user's communicator, ERRORS_RETURN */
    MPI_Comm sp_comm; /* ranks with my (dp, tp): the sequence ring, rank = sp_rank */
    MPI_Comm tp_comm; /* ranks with my (dp, sp), rank = tp_rank */
    MPI_Comm dp_comm; /* ranks with my (tp, sp), rank = dp_rank */
    int rank, size;
    int dp, tp, sp;
    int dp_rank, tp_rank, sp_rank;
};

/* Collective over m->comm: every rank passes its local status and all
 * return the same one (the most negative; MATTN_OK if all succeeded). When
 * another rank failed, this rank's last error becomes that rank's message,
 * prefixed with its rank, so every rank reports the same failure. */
int mattn__mesh_agree(const mattn_mesh *m, int local_status);

/* The same over any communicator (used before a mesh exists). */
int mattn__comm_agree(MPI_Comm comm, int local_status);

/* Most values one agreement can compare. */
#define MATTN__AGREE_MAX 40

/* Collective over m->comm, one allreduce in the success path: agrees on the
 * status as mattn__mesh_agree does AND checks that every rank passed the
 * same values[0..n) (a distributed call's schedule is derived from them, so
 * ranks that disagree would otherwise wait for messages that never come).
 * A failed status wins; else a mismatch gives MATTN_ERR_ARG on every rank,
 * naming names[i] of the first differing value. n <= MATTN__AGREE_MAX.
 * kinds[i] says how the message prints value i: 'i' int64, 'u' uint64,
 * 'f' the bits of a float, 'h' a hash (not printed: "different <name>");
 * kinds NULL: all 'i'. */
int mattn__mesh_agree_values(const mattn_mesh *m, int local_status, const int64_t *values,
                             const char *const *names, const char *kinds, int n);

#endif
