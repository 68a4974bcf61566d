/* The distributed backward front door (mattn_mesh_backward) and the gradient
 * checks it shares with the ring backward.
 *
 * vanilla, flash, sdpa and splash partition over dp x tp exactly as the
 * forward does (partition.c): a rank owns whole batch entries and kv-head
 * groups, so its dq / dk / dv are a plain single-rank backward on its shard.
 * The gradients of the global arguments are sums over rows every rank holds
 * a part of: dsinks over (batch, row) of each head, dbias over the batch /
 * heads it broadcasts along. Each rank computes its contribution, places it
 * in the global array and one allreduce sums them, so every rank returns
 * the whole gradient. The ring (sp > 1) is ring/ring_bwd.c; it writes its
 * dbias rows straight into the global array and shares the allreduce. */
#include "mesh/partition_bwd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/scratch.h"
#include "core/status.h"
#include "mesh/mesh.h"
#include "ring/ring.h"

/* ---------------------------------------------------------------- checks */

int mattn__dist_grad_check(const mattn__dist *d, const mattn_tensor *q, const mattn_tensor *k,
                           const mattn_tensor *v, const mattn_tensor *o, const float *lse,
                           const mattn_tensor *dout, const mattn_tensor *dq,
                           const mattn_tensor *dk, const mattn_tensor *dv,
                           const float *dsinks, const float *dbias, const mattn_options *opts)
{
    int rc;
    const mattn_shard *sh = &d->shard;
    int64_t n_lse = sh->batch_count * sh->q_head_count * sh->q_len;
    if (lse == NULL && n_lse > 0)
        return mattn__fail(MATTN_ERR_ARG,
                           "lse is NULL: backward needs the forward's log-sum-exp");
    if ((rc = mattn__tensor_check_like("local ", "dout", dout, "o", o, 0)) ||
        (rc = mattn__tensor_check_like("local ", "dq", dq, "q", q, 1)) ||
        (rc = mattn__tensor_check_like("local ", "dk", dk, "k", k, 1)) ||
        (rc = mattn__tensor_check_like("local ", "dv", dv, "v", v, 1)))
        return rc;
    if (dsinks && opts->sinks == NULL)
        return mattn__fail(MATTN_ERR_ARG, "dsinks given but the options have no sinks");
    if (dbias && opts->bias.data == NULL)
        return mattn__fail(MATTN_ERR_ARG, "dbias given but the options have no bias");
    /* -inf is an empty row; NaN or +inf would turn its gradients into NaN. */
    for (int64_t x = 0; x < n_lse; x++)
        if (isnan(lse[x]) || lse[x] == INFINITY)
            return mattn__fail(MATTN_ERR_ARG, "lse[%lld] = %g is not a log-sum-exp",
                               (long long)x, lse[x]);
    return MATTN_OK;
}

double *mattn__dist_dsinks_ws(const mattn_dist_shape *shape)
{
    double *ws = malloc(((size_t)shape->q_heads + 1) * sizeof *ws);
    if (ws == NULL)
        mattn__fail(MATTN_ERR_NOMEM, "cannot allocate %lld doubles for dsinks",
                    (long long)shape->q_heads);
    return ws;
}

int mattn__dist_sum_dsinks(const mattn_mesh *m, const mattn_dist_shape *shape,
                           const mattn_shard *sh, const float *local, double *sum,
                           float *dsinks)
{
    /* double: the terms of one head come from every rank. */
    memset(sum, 0, sizeof *sum * (size_t)shape->q_heads);
    for (int64_t h = 0; local && h < sh->q_head_count; h++)
        sum[sh->q_head_start + h] = local[h];
    int rc = MATTN_OK;
    if (MPI_Allreduce(MPI_IN_PLACE, sum, (int)shape->q_heads, MPI_DOUBLE, MPI_SUM, m->comm) !=
        MPI_SUCCESS)
        rc = mattn__fail(MATTN_ERR_MPI, "MPI_Allreduce of dsinks failed");
    for (int64_t h = 0; rc == MATTN_OK && h < shape->q_heads; h++)
        dsinks[h] = (float)sum[h];
    return rc;
}

/* ---------------------------------------------------------------- partitioning */

int mattn__dist_sum_dbias(const mattn_mesh *m, const mattn_dist_shape *shape,
                          const mattn_options *opts, float *dbias)
{
    int64_t n = opts->bias.batch * opts->bias.heads * shape->q_len * shape->kv_len;
    /* In chunks: counts are ints. */
    for (int64_t x = 0; x < n; x += (int64_t)1 << 28) {
        int c = (int)(n - x < ((int64_t)1 << 28) ? n - x : ((int64_t)1 << 28));
        if (MPI_Allreduce(MPI_IN_PLACE, dbias + x, c, MPI_FLOAT, MPI_SUM, m->comm) !=
            MPI_SUCCESS)
            return mattn__fail(MATTN_ERR_MPI, "MPI_Allreduce of dbias failed");
    }
    return MATTN_OK;
}

/* dbias: this rank's [lb, lh, T, S] placed in the zeroed global
 * [bias.batch, bias.heads, T, S], then summed over the mesh (sp = 1, so
 * every rank has whole T x S planes). */
static int sum_dbias(const mattn_mesh *m, const mattn_dist_shape *shape, const mattn__dist *d,
                     const mattn_options *opts, const float *local, float *dbias)
{
    const mattn_bias *b = &opts->bias;
    int64_t plane = shape->q_len * shape->kv_len, n = b->batch * b->heads * plane;
    memset(dbias, 0, sizeof(float) * (size_t)n);
    if (local) {
        int64_t lb = b->batch == 1 ? 1 : d->shard.batch_count;
        int64_t lh = b->heads == 1 ? 1 : d->shard.q_head_count;
        for (int64_t i = 0; i < lb; i++)
            for (int64_t h = 0; h < lh; h++) {
                int64_t gb = b->batch == 1 ? 0 : d->shard.batch_start + i;
                int64_t gh = b->heads == 1 ? 0 : d->shard.q_head_start + h;
                memcpy(dbias + (gb * b->heads + gh) * plane, local + (i * lh + h) * plane,
                       sizeof(float) * (size_t)plane);
            }
    }
    return mattn__dist_sum_dbias(m, shape, opts, dbias);
}

int mattn_mesh_backward(const mattn_mesh *m, const mattn_dist_shape *shape, mattn_op op,
                        const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                        const mattn_tensor *o, const float *lse, const mattn_tensor *dout,
                        const mattn_tensor *dq, const mattn_tensor *dk, const mattn_tensor *dv,
                        float *dsinks, float *dbias, const mattn_options *opts,
                        const mattn_ring_options *ring)
{
    if (m == NULL) /* nothing to agree over */
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    if (op == MATTN_OP_RING)
        return mattn__ring_backward(m, shape, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias,
                                    opts, ring, NULL);
    mattn__dist d;
    float *ds_local = NULL, *db_local = NULL;
    double *ds_sum = NULL;
    int rc = mattn__dist_prepare(m, shape, q, k, v, o, (float *)lse, opts, &d);
    if (rc == MATTN_OK)
        rc = mattn__dist_grad_check(&d, q, k, v, o, lse, dout, dq, dk, dv, dsinks, dbias, opts);
    if (rc == MATTN_OK && op != MATTN_OP_VANILLA && op != MATTN_OP_FLASH &&
        op != MATTN_OP_SDPA && op != MATTN_OP_SPLASH)
        rc = mattn__fail(MATTN_ERR_ARG, "unknown operator %d", (int)op);
    else if (rc == MATTN_OK && m->sp > 1)
        rc = mattn__fail(MATTN_ERR_UNSUPPORTED,
                         "%s partitions batch and heads only but the mesh has sp=%d: use "
                         "MATTN_OP_RING to shard the sequence",
                         mattn_op_name(op), m->sp);
    if (rc == MATTN_OK && d.active && dsinks) {
        ds_local = mattn__scratch_get(sizeof(float) * (size_t)d.shard.q_head_count);
        if (ds_local == NULL)
            rc = mattn__fail(MATTN_ERR_NOMEM, "cannot allocate the local dsinks");
    }
    if (rc == MATTN_OK && dsinks && (ds_sum = mattn__dist_dsinks_ws(shape)) == NULL)
        rc = MATTN_ERR_NOMEM;
    if (rc == MATTN_OK && d.active && dbias) {
        int64_t lb = opts->bias.batch == 1 ? 1 : d.shard.batch_count;
        int64_t lh = opts->bias.heads == 1 ? 1 : d.shard.q_head_count;
        size_t n = (size_t)(lb * lh * shape->q_len * shape->kv_len);
        if ((db_local = mattn__scratch_get(sizeof(float) * (n ? n : 1))) == NULL)
            rc = mattn__fail(MATTN_ERR_NOMEM, "cannot allocate %zu floats of local dbias", n);
    }
    int tag = (int)op | MATTN__AGREE_BACKWARD | (dsinks ? MATTN__AGREE_DSINKS : 0) |
              (dbias ? MATTN__AGREE_DBIAS : 0);
    rc = mattn__dist_agree(m, rc, shape, q, v, opts, (mattn_op)tag, ring);
    if (rc)
        goto done;

    if (d.active) {
        mattn_options lo = mattn__dist_local_options(opts, &d);
        if (op == MATTN_OP_VANILLA)
            rc = mattn_vanilla_backward(q, k, v, o, lse, dout, dq, dk, dv, ds_local, db_local,
                                        &lo);
        else if (op == MATTN_OP_FLASH)
            rc = mattn_flash_backward(q, k, v, o, lse, dout, dq, dk, dv, ds_local, db_local,
                                      &lo);
        else if (op == MATTN_OP_SDPA)
            rc = mattn_sdpa_backward(q, k, v, o, lse, dout, dq, dk, dv, ds_local, db_local,
                                     &lo, NULL);
        else
            rc = mattn_splash_backward(q, k, v, o, lse, dout, dq, dk, dv, ds_local, db_local,
                                       NULL, &lo);
    }
    /* A kernel can still fail (memory): agree before the sums. */
    if ((rc = mattn__mesh_agree(m, rc)))
        goto done;
    if (dsinks)
        rc = mattn__dist_sum_dsinks(m, shape, &d.shard, ds_local, ds_sum, dsinks);
    if (rc == MATTN_OK && dbias)
        rc = sum_dbias(m, shape, &d, opts, db_local, dbias);
    rc = mattn__mesh_agree(m, rc);
done:
    free(ds_sum);
    mattn__scratch_put(ds_local);
    mattn__scratch_put(db_local);
    return rc;
}
