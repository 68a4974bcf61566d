/* Mesh creation, coordinates and the status agreement. */
#include "mesh/mesh.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"

void mattn_split(int64_t n, int parts, int index, int64_t *start, int64_t *count)
{
    int64_t base = n / parts, extra = n % parts;
    *count = base + (index < extra ? 1 : 0);
    *start = index * base + (index < extra ? index : extra);
}

int mattn__comm_agree(MPI_Comm comm, int local_status)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    /* MINLOC picks the most negative status, and the lowest rank among ties. */
    struct {
        int status, rank;
    } mine = {local_status, rank}, worst;
    if (MPI_Allreduce(&mine, &worst, 1, MPI_2INT, MPI_MINLOC, comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Allreduce failed while agreeing on a status");
    if (worst.status == MATTN_OK)
        return MATTN_OK;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mattn_last_error());
    if (MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, worst.rank, comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Bcast failed while agreeing on a status");
    msg[sizeof msg - 1] = '\0';
    if (rank == worst.rank)
        return worst.status;
    char detail[600];
    snprintf(detail, sizeof detail, "rank %d: %s", worst.rank, msg);
    mattn__set_last_error(detail);
    return worst.status;
}

int mattn__mesh_agree(const mattn_mesh *m, int local_status)
{
    return mattn__comm_agree(m->comm, local_status);
}

/* Prints value v of kind k for the mismatch message. */
static void describe(char kind, int64_t v, char *buf, size_t n)
{
    if (kind == 'f') {
        uint32_t u = (uint32_t)v;
        float x;
        memcpy(&x, &u, sizeof x);
        snprintf(buf, n, "%g", (double)x);
    } else if (kind == 'u') {
        snprintf(buf, n, "%llu", (unsigned long long)(uint64_t)v);
    } else {
        snprintf(buf, n, "%lld", (long long)v);
    }
}

int mattn__mesh_agree_values(const mattn_mesh *m, int local_status, const int64_t *values,
                             const char *const *names, const char *kinds, int n)
{
    /* One MAX-allreduce of [-status, v.., ~v..]: the first entry is minus
     * the worst status; ~ reverses the order of int64 exactly (no overflow,
     * unlike -v at INT64_MIN), so ~max(~v) is the min, and a value agrees iff
     * its max equals its min. */
    int64_t in[1 + 2 * MATTN__AGREE_MAX], out[1 + 2 * MATTN__AGREE_MAX];
    if (n > MATTN__AGREE_MAX)
        n = MATTN__AGREE_MAX;
    in[0] = -(int64_t)local_status;
    for (int i = 0; i < n; i++) {
        in[1 + i] = values[i];
        in[1 + n + i] = ~values[i];
    }
    if (MPI_Allreduce(in, out, 1 + 2 * n, MPI_INT64_T, MPI_MAX, m->comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Allreduce failed while agreeing on a status");
    if (out[0] != 0) /* some rank failed: every rank saw it, so all enter */
        return mattn__comm_agree(m->comm, local_status);
    for (int i = 0; i < n; i++) {
        int64_t lo = ~out[1 + n + i], hi = out[1 + i];
        if (lo == hi)
            continue;
        char kind = kinds ? kinds[i] : 'i';
        if (kind == 'h')
            return mattn__fail(MATTN_ERR_ARG, "ranks passed different %s", names[i]);
        char a[32], b[32];
        describe(kind, lo, a, sizeof a);
        describe(kind, hi, b, sizeof b);
        return mattn__fail(MATTN_ERR_ARG, "ranks passed different values of %s (from %s to %s)",
                           names[i], a, b);
    }
    return MATTN_OK;
}

int mattn_mesh_create(MPI_Comm comm, int dp, int tp, int sp, mattn_mesh **out)
{
    int initialized = 0, finalized = 0;
    if (out == NULL)
        return mattn__fail(MATTN_ERR_ARG, "mesh output pointer is NULL");
    *out = NULL;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized)
        return mattn__fail(MATTN_ERR_MPI, "MPI is not initialised (or already finalised)");
    if (comm == MPI_COMM_NULL)
        return mattn__fail(MATTN_ERR_ARG, "communicator is MPI_COMM_NULL");

    mattn_mesh *m = calloc(1, sizeof *m);
    int local = MATTN_OK;
    if (m == NULL)
        local = mattn__fail(MATTN_ERR_NOMEM, "cannot allocate the mesh");
    /* Dup is collective: every rank takes part even if its allocation failed. */
    MPI_Comm dup = MPI_COMM_NULL;
    if (MPI_Comm_dup(comm, &dup) != MPI_SUCCESS) {
        free(m);
        return mattn__fail(MATTN_ERR_MPI, "MPI_Comm_dup failed");
    }
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    int rank, size;
    MPI_Comm_rank(dup, &rank);
    MPI_Comm_size(dup, &size);

    if (local == MATTN_OK && (dp < 1 || tp < 1 || sp < 1))
        local = mattn__fail(MATTN_ERR_ARG, "mesh axes must be >= 1 (dp=%d, tp=%d, sp=%d)", dp,
                            tp, sp);
    else if (local == MATTN_OK && (long long)dp * tp * sp != size)
        local = mattn__fail(MATTN_ERR_ARG,
                            "mesh dp x tp x sp = %d x %d x %d = %lld but the communicator has "
                            "%d ranks",
                            dp, tp, sp, (long long)dp * tp * sp, size);
    /* All ranks must agree on the shape: compare min and max of each axis. */
    int shape[3] = {dp, tp, sp}, lo[3], hi[3];
    int rc = MPI_Allreduce(shape, lo, 3, MPI_INT, MPI_MIN, dup);
    if (rc == MPI_SUCCESS)
        rc = MPI_Allreduce(shape, hi, 3, MPI_INT, MPI_MAX, dup);
    if (rc != MPI_SUCCESS)
        local = mattn__fail(MATTN_ERR_MPI, "MPI_Allreduce failed in mesh creation");
    else if (local == MATTN_OK && memcmp(lo, hi, sizeof lo) != 0)
        local = mattn__fail(MATTN_ERR_ARG, "ranks passed different mesh shapes (dp %d..%d, "
                            "tp %d..%d, sp %d..%d)", lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]);
    int status = mattn__comm_agree(dup, local);
    if (status != MATTN_OK) {
        MPI_Comm_free(&dup);
        free(m);
        return status;
    }

    m->comm = dup;
    m->rank = rank, m->size = size;
    m->dp = dp, m->tp = tp, m->sp = sp;
    m->sp_rank = rank % sp;
    m->tp_rank = (rank / sp) % tp;
    m->dp_rank = rank / (sp * tp);
    rc = MPI_Comm_split(dup, m->dp_rank * tp + m->tp_rank, m->sp_rank, &m->sp_comm);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_split(dup, m->dp_rank * sp + m->sp_rank, m->tp_rank, &m->tp_comm);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_split(dup, m->tp_rank * sp + m->sp_rank, m->dp_rank, &m->dp_comm);
    status = mattn__comm_agree(dup, rc == MPI_SUCCESS ? MATTN_OK
                                                      : mattn__fail(MATTN_ERR_MPI,
                                                                    "MPI_Comm_split failed"));
    if (status != MATTN_OK) {
        mattn_mesh_free(m);
        return status;
    }
    MPI_Comm_set_errhandler(m->sp_comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(m->tp_comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(m->dp_comm, MPI_ERRORS_RETURN);
    *out = m;
    return MATTN_OK;
}

void mattn_mesh_free(mattn_mesh *m)
{
    if (m == NULL)
        return;
    MPI_Comm *comms[] = {&m->sp_comm, &m->tp_comm, &m->dp_comm, &m->comm};
    for (size_t i = 0; i < sizeof comms / sizeof comms[0]; i++)
        if (*comms[i] != MPI_COMM_NULL && *comms[i] != 0)
            MPI_Comm_free(comms[i]);
    free(m);
}

void mattn_mesh_shape(const mattn_mesh *m, int *dp, int *tp, int *sp)
{
    if (dp)
        *dp = m->dp;
    if (tp)
        *tp = m->tp;
    if (sp)
        *sp = m->sp;
}

void mattn_mesh_coords(const mattn_mesh *m, int *dp_rank, int *tp_rank, int *sp_rank)
{
    if (dp_rank)
        *dp_rank = m->dp_rank;
    if (tp_rank)
        *tp_rank = m->tp_rank;
    if (sp_rank)
        *sp_rank = m->sp_rank;
}

int mattn_mesh_rank(const mattn_mesh *m)
{
    return m->rank;
}

int mattn_mesh_size(const mattn_mesh *m)
{
    return m->size;
}

MPI_Comm mattn_mesh_comm(const mattn_mesh *m)
{
    return m->comm;
}
