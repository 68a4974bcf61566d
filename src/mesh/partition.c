/* shard_map-style partitioning: vanilla, flash, sdpa and splash over dp x tp.
 *
 * A rank owns whole batch entries and whole kv-head groups, so its part of
 * the attention needs nothing from any other rank: it is a plain
 * single-rank call on its shard, with the global sinks, mask and bias
 * sliced to its batch entries and heads and the dropout indices offset to
 * its global ones. The only messages are the status agreements. */
#include "core/status.h"
#include "kernels/splash_mask.h"
#include "mattn.h"
#include "mesh/dist.h"
#include "ops/ops.h"

const char *mattn_op_name(mattn_op op)
{
    switch (op) {
    case MATTN_OP_VANILLA:
        return "vanilla";
    case MATTN_OP_FLASH:
        return "flash";
    case MATTN_OP_SDPA:
        return "sdpa";
    case MATTN_OP_SPLASH:
        return "splash";
    case MATTN_OP_RING:
        return "ring";
    }
    return "unknown";
}

int mattn_mesh_forward(const mattn_mesh *m, const mattn_dist_shape *shape, mattn_op op,
                       const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                       const mattn_tensor *o, float *lse, const mattn_options *opts,
                       const mattn_ring_options *ring, mattn_kernel *chosen)
{
    if (m == NULL) /* nothing to agree over */
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    if (op == MATTN_OP_RING) {
        int rc = mattn_ring_forward_ex(m, shape, q, k, v, o, lse, opts, ring, NULL);
        if (rc == MATTN_OK && chosen)
            *chosen = MATTN_KERNEL_FLASH; /* the ring runs the flash kernel per step */
        return rc;
    }
    if (op == MATTN_OP_SPLASH) { /* the mask from the options */
        int rc = mattn_mesh_splash_forward(m, shape, q, k, v, o, lse, NULL, opts);
        if (rc == MATTN_OK && chosen)
            *chosen = MATTN_KERNEL_SPLASH;
        return rc;
    }
    mattn__dist d;
    int rc = mattn__dist_prepare(m, shape, q, k, v, o, lse, opts, &d);
    if (rc == MATTN_OK && op != MATTN_OP_VANILLA && op != MATTN_OP_FLASH &&
        op != MATTN_OP_SDPA)
        rc = mattn__fail(MATTN_ERR_ARG, "unknown operator %d", (int)op);
    else if (rc == MATTN_OK && m->sp > 1)
        rc = mattn__fail(MATTN_ERR_UNSUPPORTED,
                         "%s partitions batch and heads only but the mesh has sp=%d: use "
                         "MATTN_OP_RING to shard the sequence",
                         mattn_op_name(op), m->sp);
    rc = mattn__dist_agree(m, rc, shape, q, v, opts, op, ring);
    if (rc)
        return rc;

    mattn_kernel kernel = op == MATTN_OP_VANILLA ? MATTN_KERNEL_VANILLA : MATTN_KERNEL_FLASH;
    if (d.active) {
        mattn_options lo = mattn__dist_local_options(opts, &d);
        if (op == MATTN_OP_VANILLA)
            rc = mattn_vanilla_forward(q, k, v, o, lse, NULL, &lo);
        else if (op == MATTN_OP_FLASH)
            rc = mattn_flash_forward(q, k, v, o, lse, &lo);
        else
            rc = mattn_sdpa_forward(q, k, v, o, lse, &lo, &kernel);
    }
    /* One allreduce agrees on the status (a kernel can still run out of
     * memory) and tells ranks without work what sdpa ran elsewhere (the
     * highest kernel if shards chose differently). */
    int64_t in[2] = {-(int64_t)rc, d.active ? (int64_t)kernel : -1}, out[2];
    if (MPI_Allreduce(in, out, 2, MPI_INT64_T, MPI_MAX, m->comm) != MPI_SUCCESS)
        return mattn__fail(MATTN_ERR_MPI, "MPI_Allreduce failed after the partitioned call");
    if (out[0] != 0)
        return mattn__mesh_agree(m, rc); /* every rank saw the failure: all enter */
    if (!d.active && out[1] >= 0)
        kernel = (mattn_kernel)out[1];
    else if (!d.active && op == MATTN_OP_SDPA)
        kernel = mattn__sdpa_choose(&d.global); /* nobody had work */
    if (chosen)
        *chosen = kernel;
    return rc;
}

/* Splash over dp x tp: the rank's shard is a single-rank splash call whose
 * info covers the rank's global q heads (head_first) of a per-head mask; the
 * positions are global already (sp = 1). Messages: the status agreements. */
int mattn_mesh_splash_forward(const mattn_mesh *m, const mattn_dist_shape *shape,
                              const mattn_tensor *q, const mattn_tensor *k, const mattn_tensor *v,
                              const mattn_tensor *o, float *lse, const mattn_splash_mask *mask,
                              const mattn_options *opts)
{
    if (m == NULL)
        return mattn__fail(MATTN_ERR_ARG, "mesh is NULL");
    mattn__dist d;
    int rc = mattn__dist_prepare(m, shape, q, k, v, o, lse, opts, &d);
    int64_t mask_heads = mask ? mattn_splash_mask_heads(mask) : 0;
    if (rc == MATTN_OK && m->sp > 1)
        rc = mattn__fail(MATTN_ERR_UNSUPPORTED,
                         "splash partitions batch and heads only but the mesh has sp=%d: use "
                         "MATTN_OP_RING to shard the sequence",
                         m->sp);
    else if (rc == MATTN_OK && mask_heads > 1 && mask_heads != shape->q_heads)
        rc = mattn__fail(MATTN_ERR_SHAPE, "splash: per-head mask has %lld heads, q has %lld",
                         (long long)mask_heads, (long long)shape->q_heads);
    rc = mattn__dist_agree(m, rc, shape, q, v, opts, MATTN_OP_SPLASH, NULL);
    if (rc)
        return rc;
    /* Every rank must pass the same mask (NULL or not, its heads, its
     * structure and dense contents). */
    static const char *const names[] = {"the splash mask's head count (0: NULL)",
                                        "splash masks (every rank must pass the same mask)"};
    int64_t agreed[2] = {mask_heads, (int64_t)mattn__splash_mask_hash(mask)};
    if ((rc = mattn__mesh_agree_values(m, MATTN_OK, agreed, names, "ih", 2)))
        return rc;

    if (d.active) {
        mattn_options lo = mattn__dist_local_options(opts, &d);
        if (mask == NULL) {
            rc = mattn_splash_forward(q, k, v, o, lse, NULL, &lo);
        } else {
            mattn_splash_info_options io = mattn_splash_info_options_default();
            io.q_offset = lo.q_offset;
            io.kv_offset = lo.kv_offset;
            io.block_q = lo.block_q;
            io.block_kv = lo.block_kv;
            io.head_first = d.shard.q_head_start;
            io.heads = d.shard.q_head_count;
            mattn_splash_info *info = NULL;
            rc = mattn_splash_info_create(mask, q->seq, k->seq, &io, &info);
            if (rc == MATTN_OK)
                rc = mattn_splash_forward_info(q, k, v, o, lse, info, &lo);
            mattn_splash_info_free(info);
        }
    }
    /* A kernel can still fail (memory): every rank returns the same status. */
    return mattn__mesh_agree(m, rc);
}
